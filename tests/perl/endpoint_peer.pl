#!/usr/bin/perl
# endpoint_peer.pl - Perl's Net::SIP::Simple as a live peer for the tests of
# netsip's Endpoint (calls and registration).
#
# Every mode prints one line per SIP message its dispatcher receives:
#     RECV REQUEST <method> <cseq> [auth]      ("auth": it has Authorization)
#     RECV RESPONSE <code> <cseq>
# and its own events ("FINAL OK 200", "ESTABLISHED", "PEER-BYE", "BYE-DONE"),
# then "DONE <result>" last. Output is flushed line by line.
#
#   call:      invite --to (a SIP URI) from a leg on --listen, with an SDP
#              offer; once the 200 came (Simple ACKs it), wait --hold seconds
#              and send BYE. Exit 0 if the call came up and the BYE got 200.
#   listen:    print "LISTENING <ip> <port>", accept one call (Simple->listen
#              answers 200 with SDP). With --bye-after S hang up S seconds
#              after the ACK, else wait for the peer's BYE. Exit 0 if the
#              call came up (ACK) and ended cleanly (our BYE got 200, or the
#              peer's BYE arrived).
#   registrar: print "LISTENING <ip> <port>", run Net::SIP::Registrar behind
#              Net::SIP::Authorize (--user/--password, realm --realm) until
#              SIGTERM or --timeout; print "DONE registers=<n>". Exit 0.
#
# Exit 2 if --timeout ended a call mode before the call was over, 1 if the
# call failed.

use strict;
use warnings;

use Getopt::Long qw(GetOptions);
use IO::Socket::IP;
use Socket qw(SOCK_DGRAM SOCK_STREAM);
use Net::SIP;
use Net::SIP::Util qw(ip_string2parts);
use Net::SIP::Debug;

$| = 1;

my %opt = (
    mode      => '',
    proto     => 'udp',
    listen    => '127.0.0.1:0',
    timeout   => 20,
    hold      => 0.2,
    realm     => 'netsip.test',
    user      => 'alice',
    password  => 'secret',
    debug     => 0,
);
GetOptions(
    'mode=s'      => \$opt{mode},
    'proto=s'     => \$opt{proto},
    'to=s'        => \$opt{to},
    'listen=s'    => \$opt{listen},
    'timeout=f'   => \$opt{timeout},
    'hold=f'      => \$opt{hold},
    'bye-after=f' => \$opt{bye_after},
    'realm=s'     => \$opt{realm},
    'user=s'      => \$opt{user},
    'password=s'  => \$opt{password},
    'debug=i'     => \$opt{debug},
) or usage();

sub usage {
    print STDERR <<"USAGE";
usage: $0 --mode call --to SIP-URI [--proto udp|tcp] [--hold S]
       $0 --mode listen [--proto udp|tcp] [--bye-after S]
       $0 --mode registrar [--proto udp|tcp] [--user U --password P --realm R]
common: [--listen IP:PORT] [--timeout S] [--debug LEVEL]
USAGE
    exit 64;
}

$opt{proto} =~ m{^(udp|tcp)\z} or usage();
Net::SIP::Debug->level($opt{debug}) if $opt{debug};

my $stopped = 0;
$SIG{TERM} = $SIG{INT} = sub { $stopped = 1 };

# The leg on a socket made here, so port 0 works (Net::SIP::Leg would try
# 5060 first). Its contact names the transport: Net::SIP leaves
# ";transport=tcp" out, and the peer would answer a TCP call over UDP.
sub make_leg {
    my ($ip, $port, $family) = ip_string2parts($opt{listen});
    $family or die "--listen must be IP:PORT, not '$opt{listen}'\n";
    my $sock = IO::Socket::IP->new(
        Family    => $family,
        LocalHost => $ip,
        LocalPort => $port // 0,
        ReuseAddr => 1,
        $opt{proto} eq 'udp'
            ? (Type => SOCK_DGRAM, Proto => 'udp')
            : (Type => SOCK_STREAM, Proto => 'tcp', Listen => 64),
    ) or die "cannot create $opt{proto} socket on $opt{listen}: $@\n";
    my $hostport = $sock->sockhost =~ m{:} ? '[' . $sock->sockhost . ']:' . $sock->sockport
        : $sock->sockhost . ':' . $sock->sockport;
    my $contact = "sip:$hostport" . ($opt{proto} eq 'udp' ? '' : ";transport=$opt{proto}");
    my $leg = Net::SIP::Leg->new(sock => $sock, proto => $opt{proto}, contact => $contact);
    return ($leg, $sock, $hostport);
}

# Print every packet the dispatcher receives, then hand it on.
sub trace_receiver {
    my $disp = shift;
    my $inner = $disp->{receiver} or die "no receiver to trace\n";
    $disp->set_receiver([ sub {
        my ($packet, $leg, $from) = @_;
        if ($packet->is_request) {
            my $auth = $packet->get_header('authorization') ? ' auth' : '';
            print "RECV REQUEST ", $packet->method, " ", $packet->cseq, "$auth\n";
        } else {
            print "RECV RESPONSE ", $packet->code, " ", $packet->cseq, "\n";
        }
        return Net::SIP::Util::invoke_callback($inner, $packet, $leg, $from);
    } ]);
}

# True if a line "RECV RESPONSE 200 <n> BYE" was printed (kept as we print).
my %bye_ok;
sub note_bye_response {
    my $disp = shift;
    my $inner = $disp->{receiver};
    $disp->set_receiver([ sub {
        my ($packet) = @_;
        $bye_ok{1} = 1 if !$packet->is_request && $packet->method eq 'BYE' && $packet->code == 200;
        return Net::SIP::Util::invoke_callback($inner, @_);
    } ]);
}

my $mode = $opt{mode};
exit(run_call()) if $mode eq 'call';
exit(run_listen()) if $mode eq 'listen';
exit(run_registrar()) if $mode eq 'registrar';
usage();

sub new_ua {
    my ($leg, $hostport) = @_;
    my $ua = Net::SIP::Simple->new(
        legs => [$leg],
        from => "<sip:perl\@$hostport>",
    );
    return $ua;
}

sub run_call {
    my $to = $opt{to} or usage();
    my ($leg, $sock, $hostport) = make_leg();
    my $ua = new_ua($leg, $hostport);
    my $disp = $ua->{dispatcher};
    trace_receiver($disp);
    note_bye_response($disp);

    my ($final, $peer_bye, $bye_done) = ('', 0, 0);
    my $call = $ua->invite($to,
        cb_final => sub {
            my ($status, $call, %info) = @_;
            my $code = $info{code} // ($info{packet} ? $info{packet}->code : 0);
            print "FINAL $status $code\n";
            $final = $status;
        },
        recv_bye => sub { print "PEER-BYE\n"; $peer_bye = 1 },
    ) or die "invite failed: " . $ua->error . "\n";

    $ua->loop($opt{timeout}, \$final, \$stopped);
    if ($final ne 'OK') {
        print "DONE failed: ", ($final || 'no final response'), "\n";
        return $final ? 1 : 2;
    }
    my $hold_over = 0;
    $ua->add_timer($opt{hold}, \$hold_over);
    $ua->loop($opt{timeout}, \$hold_over, \$peer_bye, \$stopped);
    if ($peer_bye) {
        print "DONE failed: the peer hung up\n";
        return 1;
    }
    $call->bye(cb_final => sub { print "BYE-DONE\n"; $bye_done = 1 });
    $ua->loop($opt{timeout}, \$bye_done, \$stopped);
    if (!$bye_done) {
        print "DONE failed: no answer to BYE\n";
        return 2;
    }
    print "DONE ", ($bye_ok{1} ? 'ok' : 'failed: BYE not answered 200'), "\n";
    return $bye_ok{1} ? 0 : 1;
}

sub run_listen {
    my ($leg, $sock, $hostport) = make_leg();
    my $ua = new_ua($leg, $hostport);
    my $disp = $ua->{dispatcher};
    print "LISTENING ", $sock->sockhost, " ", $sock->sockport, "\n";

    my ($established, $peer_bye, $bye_done, $call) = (0, 0, 0);
    $ua->listen(
        cb_create => sub {
            ($call) = @_;
            print "CALL-CREATED\n";
            return 1;
        },
        cb_established => sub {
            print "ESTABLISHED\n";
            $established = 1;
            $ua->add_timer($opt{bye_after}, sub {
                $call->bye(cb_final => sub { print "BYE-DONE\n"; $bye_done = 1 });
            }) if defined $opt{bye_after};
        },
        recv_bye => sub { print "PEER-BYE\n"; $peer_bye = 1 },
    );
    trace_receiver($disp);
    note_bye_response($disp);

    $ua->loop($opt{timeout}, \$peer_bye, \$bye_done, \$stopped);
    if (!$established) {
        print "DONE failed: call not established\n";
        return 2;
    }
    if (defined $opt{bye_after}) {
        my $ok = $bye_done && $bye_ok{1};
        print "DONE ", ($ok ? 'ok' : 'failed: our BYE not answered 200'), "\n";
        return $ok ? 0 : ($bye_done ? 1 : 2);
    }
    print "DONE ", ($peer_bye ? 'ok' : 'failed: no BYE from the peer'), "\n";
    return $peer_bye ? 0 : 2;
}

sub run_registrar {
    my ($leg, $sock, $hostport) = make_leg();
    my $ua = Net::SIP::Simple->new(legs => [$leg]);
    my $disp = $ua->{dispatcher};
    print "LISTENING ", $sock->sockhost, " ", $sock->sockport, "\n";

    $ua->create_chain([
        $ua->create_auth(
            realm     => $opt{realm},
            user2pass => { $opt{user} => $opt{password} },
        ),
        $ua->create_registrar,
    ]);
    trace_receiver($disp);

    my $registers = 0;
    my $inner = $disp->{receiver};
    $disp->set_receiver([ sub {
        my ($packet) = @_;
        $registers++ if $packet->is_request && $packet->method eq 'REGISTER';
        return Net::SIP::Util::invoke_callback($inner, @_);
    } ]);

    $ua->loop($opt{timeout}, \$stopped);
    print "DONE registers=$registers\n";
    return 0;
}
