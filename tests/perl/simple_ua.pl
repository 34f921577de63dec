#!/usr/bin/perl
# simple_ua.pl - Perl's Net::SIP::Simple as a user agent behind a proxy, for
# netsip's live-peer tests of `netsip proxy` (tests/test_interop_proxy.py).
#
# The leg is made here on --listen (port 0: the system picks one); its
# contact names the transport (Net::SIP leaves ";transport=tcp" out). With
# --registrar the UA first registers sip:<user>@<domain> there, answering
# the digest challenge with --user/--password, and prints
#     REGISTERED <expires>     or     FAILED register <error>
# Every mode then prints its events, one line each, flushed, and
#     DONE ok    or    DONE failed: <why>
# last.
#
#   register: only the registration above. Exit 0 if registered.
#   listen:   print "LISTENING <ip> <port>" first, then accept one call
#             (Simple->listen, RTP echoed back by media_recv_echo) and
#             print CALL-CREATED, ESTABLISHED, PEER-BYE as they happen.
#             Exit 0 after the peer's BYE.
#   call:     invite --to (a SIP URI) through --proxy (ip:port, the outgoing
#             proxy), answering a 407 with --user/--password; once the call
#             is up send --packets RTP packets (20 ms apart, each payload
#             different), count those that come back unchanged, print
#                 FINAL <status> <code>
#                 RTP sent=<n> echoed=<m>
#             and hang up when all came back (or --echo-wait seconds after
#             the last was sent); then BYE-DONE <code>. With --registrar
#             it then removes its registration: UNREGISTERED <expires>.
#             Exit 0 if the call came up, every packet was echoed, the BYE
#             got 200 (and the registration is gone).
#
# Exit 1 if something failed, 2 if --timeout ended the run first.

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
    mode        => '',
    proto       => 'udp',
    listen      => '127.0.0.1:0',
    domain      => 'example.com',
    timeout     => 20,
    packets     => 50,
    'echo-wait' => 3,
    debug       => 0,
);
GetOptions(
    'mode=s'      => \$opt{mode},
    'proto=s'     => \$opt{proto},
    'listen=s'    => \$opt{listen},
    'registrar=s' => \$opt{registrar},
    'proxy=s'     => \$opt{proxy},
    'to=s'        => \$opt{to},
    'user=s'      => \$opt{user},
    'password=s'  => \$opt{password},
    'domain=s'    => \$opt{domain},
    'packets=i'   => \$opt{packets},
    'echo-wait=f' => \$opt{'echo-wait'},
    'timeout=f'   => \$opt{timeout},
    'debug=i'     => \$opt{debug},
) or usage();

sub usage {
    print STDERR <<"USAGE";
usage: $0 --mode register --registrar IP:PORT --user U --password P
       $0 --mode listen [--registrar IP:PORT] --user U [--password P]
       $0 --mode call --proxy IP:PORT --to SIP-URI --user U --password P [--packets N]
common: [--proto udp|tcp] [--listen IP:PORT] [--domain D] [--timeout S] [--debug LEVEL]
USAGE
    exit 64;
}

$opt{proto} =~ m{^(udp|tcp)\z} or usage();
$opt{user} or usage();
Net::SIP::Debug->level($opt{debug}) if $opt{debug};

my $stopped = 0;
$SIG{TERM} = $SIG{INT} = sub { $stopped = 1 };

sub done {
    my ($rc, $what) = @_;
    print "DONE $what\n";
    exit $rc;
}

# the transport parameter of a URI for --proto
sub transport { return $opt{proto} eq 'udp' ? '' : ";transport=$opt{proto}" }

my ($ip, $port, $family) = ip_string2parts($opt{listen});
$family or die "--listen must be IP:PORT, not '$opt{listen}'\n";
my $sock = IO::Socket::IP->new(
    Family    => $family,
    LocalHost => $ip,
    LocalPort => $port // 0,
    $opt{proto} eq 'udp'
        ? (Type => SOCK_DGRAM, Proto => 'udp')
        : (Type => SOCK_STREAM, Proto => 'tcp', Listen => 16, ReuseAddr => 1),
) or die "cannot create a $opt{proto} socket on $opt{listen}: $@\n";
my $hostport = $sock->sockhost =~ m{:} ? '[' . $sock->sockhost . ']:' . $sock->sockport
    : $sock->sockhost . ':' . $sock->sockport;
my $leg = Net::SIP::Leg->new(
    sock => $sock, proto => $opt{proto}, contact => "sip:$opt{user}\@$hostport" . transport(),
);
my $ua = Net::SIP::Simple->new(
    legs => [$leg],
    from => "sip:$opt{user}\@$opt{domain}",
    $opt{proxy} ? (outgoing_proxy => "sip:$opt{proxy}" . transport()) : (),
    defined $opt{password} ? (auth => [ $opt{user}, $opt{password} ]) : (),
);

my $timed_out = 0;
$ua->add_timer($opt{timeout}, \$timed_out);

if ($opt{mode} eq 'listen') {
    print "LISTENING ", $sock->sockhost, " ", $sock->sockport, "\n";
}
# register the contact of the leg for $expires seconds (0: remove it);
# print and return what came of it
sub register {
    my $expires = shift;
    my $result;
    $ua->register(
        # no ";transport=tcp" here: Simple would send the Request-URI in
        # angle brackets; with only a TCP leg it takes TCP anyway
        registrar => "sip:$opt{registrar}",
        contact   => "sip:$opt{user}\@$hostport" . transport(),
        expires   => $expires,
        cb_final  => sub {
            my ($status, %info) = @_;
            my $what = $expires ? 'REGISTERED' : 'UNREGISTERED';
            $result = $status eq 'OK' ? "$what " . ($info{expires} // 0)
                : "FAILED register " . ($info{code} // $info{errno} // $ua->error // '?');
        },
    );
    $ua->loop(\$result, \$timed_out, \$stopped);
    $result or done(2, 'failed: no answer to REGISTER');
    print "$result\n";
    return $result;
}

if ($opt{registrar}) {
    register(300) =~ m{^REGISTERED} or done(1, 'failed: not registered');
}
done(0, 'ok') if $opt{mode} eq 'register';
exit(run_listen()) if $opt{mode} eq 'listen';
exit(run_call()) if $opt{mode} eq 'call';
usage();

sub run_listen {
    my ($established, $peer_bye) = (0, 0);
    $ua->listen(
        init_media     => $ua->rtp('recv_echo'),
        cb_create      => sub { print "CALL-CREATED\n"; return 1 },
        cb_established => sub { print "ESTABLISHED\n"; $established = 1 },
        recv_bye       => sub { print "PEER-BYE\n"; $peer_bye = 1 },
    );
    $ua->loop(\$peer_bye, \$timed_out, \$stopped);
    done(2, 'failed: call not established') if !$established;
    done(2, 'failed: no BYE from the peer') if !$peer_bye;
    done(0, 'ok');
}

sub run_call {
    my $to = $opt{to} or usage();
    my (%sent, $final, $sending_over, $peer_bye);
    my ($nsent, $echoed) = (0, 0);
    my $payload = sub {
        return if $nsent >= $opt{packets};
        # 160 bytes (20 ms of PCMU), unique per packet
        my $data = pack('NN', $$, ++$nsent) . chr($nsent % 256) x 152;
        $sent{$data} = 1;
        return $data;
    };
    my $call = $ua->invite($to,
        init_media  => $ua->rtp('send_recv', $payload, 1,
            sub { my $data = shift; $echoed++ if delete $sent{$data} }),
        cb_rtp_done => sub { $sending_over = 1 },
        cb_final    => sub {
            my ($status, $call, %info) = @_;
            my $code = $info{code} // ($info{packet} ? $info{packet}->code : 0);
            print "FINAL $status $code\n";
            $final = $status;
        },
        recv_bye    => sub { print "PEER-BYE\n"; $peer_bye = 1 },
    ) or done(1, 'failed: invite: ' . $ua->error);

    $ua->loop(\$final, \$timed_out, \$stopped);
    done(2, 'failed: no final response') if !$final;
    done(1, "failed: call $final") if $final ne 'OK';

    # until all packets were sent, then until all came back (bounded)
    $ua->loop(\$sending_over, \$peer_bye, \$timed_out, \$stopped);
    my $all_back = 0;
    my $echo_wait = 0;
    my $check = $ua->add_timer(0.02, sub { $all_back = 1 if $echoed >= $nsent }, 0.02);
    $ua->add_timer($opt{'echo-wait'}, \$echo_wait);
    $ua->loop(\$all_back, \$echo_wait, \$peer_bye, \$timed_out, \$stopped);
    $check->cancel;
    print "RTP sent=$nsent echoed=$echoed\n";
    done(1, 'failed: the peer hung up') if $peer_bye;

    # the code of the BYE's final response, seen by the dispatcher (Simple's
    # bye callback does not get it)
    my ($bye_code, $bye_over);
    my $disp = $ua->{dispatcher};
    my $inner = $disp->{receiver};
    $disp->set_receiver([ sub {
        my ($packet) = @_;
        $bye_code = $packet->code
            if !$packet->is_request && $packet->method eq 'BYE' && $packet->code >= 200;
        return Net::SIP::Util::invoke_callback($inner, @_);
    } ]);
    $call->bye(cb_final => \$bye_over);
    $ua->loop(\$bye_over, \$timed_out, \$stopped);
    done(2, 'failed: no answer to BYE') if !defined $bye_code;
    print "BYE-DONE $bye_code\n";
    done(1, "failed: BYE got $bye_code") if $bye_code != 200;
    done(1, "failed: $echoed of $nsent RTP packets echoed")
        if $nsent != $opt{packets} || $echoed != $nsent;
    if ($opt{registrar}) {
        register(0) =~ m{^UNREGISTERED} or done(1, 'failed: not unregistered');
    }
    done(0, 'ok');
}
