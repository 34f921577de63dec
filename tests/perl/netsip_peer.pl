#!/usr/bin/perl
# netsip_peer.pl - Perl Net::SIP as a live peer for netsip's interop tests.
#
# Uses Net::SIP::Leg, Net::SIP::Dispatcher and Net::SIP::Dispatcher::Eventloop
# (the layers netsip ports) so that netsip talks to the real thing.
#
#   client: send --count OPTIONS requests, one after another, to --to and
#           print one line per response:
#               RESPONSE <code> <call-id> <cseq>
#           then "DONE ok=<n> failed=<n>". Exit 0 if every request got a 200,
#           1 if one got another answer or the delivery failed, 2 on timeout.
#   server: listen on --listen (port 0: the system picks one), print
#               LISTENING <ip> <port>
#           (flushed) before anything else, answer every request but ACK with
#           200 (create_response) and print
#               REQUEST <method> <call-id> <cseq> <proto>:<ip>:<port>
#           Exit 0 after --count answered requests (0: serve until --timeout
#           or SIGTERM), 2 if --timeout ends it before --count was reached.
#
# TLS (--proto tls) takes --cert/--key (server, or client certificate),
# --ca (trust anchor) and --host (name to verify in the server's certificate,
# default the address of --to); --verify-client 1 makes the server require a
# client certificate.

use strict;
use warnings;

use Getopt::Long qw(GetOptions);
use IO::Socket::IP;
use Socket qw(AF_INET AF_INET6 SOCK_DGRAM SOCK_STREAM);
use Net::SIP::Util qw(ip_string2parts);
use Net::SIP::Leg;
use Net::SIP::Dispatcher;
use Net::SIP::Dispatcher::Eventloop;
use Net::SIP::Request;
use Net::SIP::Debug;

$| = 1;

my %opt = (
    mode    => '',
    proto   => 'udp',
    count   => undef,
    timeout => 10,
    debug   => 0,
);
GetOptions(
    'mode=s'          => \$opt{mode},
    'proto=s'         => \$opt{proto},
    'to=s'            => \$opt{to},
    'listen=s'        => \$opt{listen},
    'count=i'         => \$opt{count},
    'timeout=f'       => \$opt{timeout},
    'cert=s'          => \$opt{cert},
    'key=s'           => \$opt{key},
    'ca=s'            => \$opt{ca},
    'host=s'          => \$opt{host},
    'verify-client=i' => \$opt{verify_client},
    'debug=i'         => \$opt{debug},
    'help'            => sub { usage(0) },
) or usage(64);

sub usage {
    my $rc = shift;
    print STDERR <<"USAGE";
usage: $0 --mode client --proto udp|tcp|tls --to IP:PORT [--count N]
       $0 --mode server --proto udp|tcp|tls [--listen IP:PORT] [--count N]
common: [--timeout SECONDS] [--debug LEVEL]
tls:    [--cert FILE --key FILE] [--ca FILE] [--host NAME] [--verify-client 0|1|-1]
USAGE
    exit $rc;
}

$opt{proto} =~ m{^(udp|tcp|tls)\z} or usage(64);
Net::SIP::Debug->level($opt{debug}) if $opt{debug};

# A clean exit on SIGTERM/SIGINT, so the test can stop a server at any time.
my $stopped = 0;
$SIG{TERM} = $SIG{INT} = sub { $stopped = 1 };

if ($opt{mode} eq 'client') {
    exit(run_client());
} elsif ($opt{mode} eq 'server') {
    exit(run_server());
} else {
    usage(64);
}

# Parse "ip:port" / "[ipv6]:port" into (ip, port, family); die on garbage.
sub parse_addr {
    my ($str, $what) = @_;
    my ($ip, $port, $family) = ip_string2parts($str);
    $family or die "$what must be an IP address, not '$str'\n";
    defined $port or die "$what needs a port: '$str'\n";
    return ($ip, $port, $family);
}

# IO::Socket::SSL arguments for the leg (Net::SIP::SocketPool hands them to
# IO::Socket::SSL for both directions).
sub tls_args {
    return () if $opt{proto} ne 'tls';
    my %tls;
    $tls{SSL_cert_file} = $opt{cert} if $opt{cert};
    $tls{SSL_key_file}  = $opt{key}  if $opt{key};
    $tls{SSL_ca_file}   = $opt{ca}   if $opt{ca};
    $tls{verify_client} = $opt{verify_client} if defined $opt{verify_client};
    return (tls => \%tls);
}

# The leg's master socket: a bound UDP socket or a listening TCP socket.
# It is created here rather than by Net::SIP::Leg because the leg tries
# 5060, 5062.. before port 0, and tests must not grab well-known ports.
sub make_leg {
    my ($ip, $port, $family) = @_;
    my $sock = IO::Socket::IP->new(
        Family    => $family,
        LocalHost => $ip,
        LocalPort => $port,
        ReuseAddr => 1,
        $opt{proto} eq 'udp'
            ? (Type => SOCK_DGRAM, Proto => 'udp')
            : (Type => SOCK_STREAM, Proto => 'tcp', Listen => 128),
    ) or die "cannot create $opt{proto} socket on $ip:$port: $@\n";
    my $leg = Net::SIP::Leg->new(
        sock  => $sock,
        proto => $opt{proto},
        tls_args(),
    );
    return ($leg, $sock);
}

sub run_client {
    my $to = $opt{to} or usage(64);
    my $count = $opt{count} // 1;
    my ($dip, $dport, $dfamily) = parse_addr($to, '--to');
    my $lspec = $opt{listen} // ($dfamily == AF_INET6 ? '[::1]:0' : '127.0.0.1:0');
    my ($lip, $lport, $lfamily) = parse_addr($lspec, '--listen');

    my $loop = Net::SIP::Dispatcher::Eventloop->new;
    my ($leg) = make_leg($lip, $lport, $lfamily);
    my $disp = Net::SIP::Dispatcher->new([$leg], $loop);

    my $dst = {
        proto  => $opt{proto},
        host   => $opt{host} // $dip,
        addr   => $dip,
        port   => $dport,
        family => $dfamily,
    };
    my $hostport = $dfamily == AF_INET6 ? "[$dip]:$dport" : "$dip:$dport";
    my $scheme = $opt{proto} eq 'tls' ? 'sips' : 'sip';
    my $uri = "$scheme:netsip\@$hostport"
        . ($opt{proto} eq 'udp' ? '' : ";transport=$opt{proto}");
    my $from = "<$scheme:perl\@" . $leg->laddr(1) . ">;tag=" . sprintf('%x', rand(2**31));

    my ($sent, $ok, $failed, $done) = (0, 0, 0, 0);
    my %pending;    # call-id -> cseq of the request in flight

    my $send_next;
    $send_next = sub {
        if ($sent >= $count) {
            $done = 1;
            return;
        }
        $sent++;
        my $callid = sprintf('perl-%d-%d-%x@%s', $$, $sent, rand(2**31), $lip);
        my $cseq = "$sent OPTIONS";
        my $req = Net::SIP::Request->new('OPTIONS', $uri, {
            from           => $from,
            to             => "<$uri>",
            'call-id'      => $callid,
            cseq           => $cseq,
            'max-forwards' => 70,
            contact        => "<$scheme:perl\@" . $leg->laddr(1) . ">",
            accept         => 'application/sdp',
        });
        $pending{$callid} = $cseq;
        $disp->deliver($req,
            leg      => $leg,
            dst_addr => { %$dst },
            callback => sub {
                my $err = shift;
                return if !$err || !exists $pending{$callid};
                # delivery failed for good: errno, timeout or TLS error
                delete $pending{$callid};
                print "ERROR $callid delivery failed: $err\n";
                $failed++;
                $send_next->();
            },
        );
    };

    $disp->set_receiver(sub {
        my ($packet, undef, $src) = @_;
        return if !$packet->is_response;
        my $callid = $packet->callid // '';
        my $cseq = $packet->cseq // '';
        exists $pending{$callid} or return;    # stray or retransmitted response
        return if $packet->code < 200;          # provisional: wait for the final one
        delete $pending{$callid};
        $disp->cancel_delivery($packet->tid);
        print "RESPONSE ", $packet->code, " $callid $cseq\n";
        $packet->code == 200 ? $ok++ : $failed++;
        $send_next->();
    });

    $send_next->();
    $loop->loop($opt{timeout}, \$done, \$stopped) if !$done;
    print "DONE ok=$ok failed=$failed\n";
    return 2 if !$done;
    return $failed || $ok != $count ? 1 : 0;
}

sub run_server {
    my $count = $opt{count} // 0;
    my ($lip, $lport, $lfamily) = parse_addr($opt{listen} // '127.0.0.1:0', '--listen');

    my $loop = Net::SIP::Dispatcher::Eventloop->new;
    my ($leg, $sock) = make_leg($lip, $lport, $lfamily);
    my $disp = Net::SIP::Dispatcher->new([$leg], $loop);
    print "LISTENING ", $sock->sockhost, " ", $sock->sockport, "\n";

    my ($answered, $written, $done) = (0, 0, 0);
    $disp->set_receiver(sub {
        my ($packet, $rleg, $src) = @_;
        return if !$packet->is_request;
        my $method = $packet->method;
        printf "REQUEST %s %s %s %s:%s:%s\n", $method, $packet->callid // '',
            $packet->cseq // '', $src->{proto} // $opt{proto}, $src->{addr}, $src->{port};
        return if $method eq 'ACK';    # never answered (RFC 3261 17.1.1.3)
        $answered++;
        my $resp = $packet->create_response(200, 'OK');
        $disp->deliver($resp,
            leg      => $rleg,
            dst_addr => $src,
            callback => sub {
                my $err = shift;
                print "ERROR response delivery failed: $err\n" if $err;
                # TCP/TLS report 0 once written, so only stop then
                $written++;
                $done = 1 if $count && $written >= $count;
            },
        );
        # UDP reports errors only: the datagram is out once deliver returns
        if ($opt{proto} eq 'udp') {
            $written++;
            $done = 1 if $count && $written >= $count;
        }
    });

    $loop->loop($opt{timeout}, \$done, \$stopped);
    print "DONE answered=$answered\n";
    return 0 if $done || $stopped || !$count;
    return 2;    # timeout before --count requests were answered
}
