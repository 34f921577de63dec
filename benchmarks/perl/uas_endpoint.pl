#!/usr/bin/perl
# Perl's Net::SIP as the UAS of the call benchmark (benchmarks/bench_calls.py):
# a Net::SIP::Leg on a UDP socket, a Net::SIP::Dispatcher and a
# Net::SIP::Endpoint whose application answers an INVITE with 180 and then a
# 200 carrying Contact and a small SDP answer. The endpoint itself sends the
# 100 Trying, adds the To tag, absorbs the ACK (it stops the 200's
# retransmissions) and answers BYE with 200. The same work as
# benchmarks/uas_endpoint.py does with netsip.
#
#   perl benchmarks/perl/uas_endpoint.pl [PORT]
#
# Prints "LISTENING <ip> <port>"; on SIGUSR1 "STATS contexts=<n>" (the live
# call contexts of the endpoint); on SIGTERM/SIGINT the same line and exits.
use strict;
use warnings;
use IO::Socket::IP;
use Socket qw(SOCK_DGRAM);
use Net::SIP::Leg;
use Net::SIP::Dispatcher;
use Net::SIP::Dispatcher::Eventloop;
use Net::SIP::Endpoint;

my $port = shift(@ARGV) || 0;
$| = 1;
# the socket is made here: Net::SIP::Leg would try 5060, 5062.. before port 0
my $sock = IO::Socket::IP->new(
    LocalHost => '127.0.0.1', LocalPort => $port, ReuseAddr => 1,
    Type => SOCK_DGRAM, Proto => 'udp',
) or die "socket: $@";
my ($ip, $lport) = ($sock->sockhost, $sock->sockport);
my $loop = Net::SIP::Dispatcher::Eventloop->new;
my $leg = Net::SIP::Leg->new(sock => $sock, proto => 'udp');
my $disp = Net::SIP::Dispatcher->new([$leg], $loop);
my $ep = Net::SIP::Endpoint->new($disp);

my $contact = "<sip:uas\@$ip:$lport>";
my $sdp = join("\r\n",
    'v=0',
    "o=- 1 1 IN IP4 $ip",
    's=-',
    "c=IN IP4 $ip",
    't=0 0',
    'm=audio 6000 RTP/AVP 0',
    'a=rtpmap:0 PCMU/8000',
    '') ;

$ep->set_application(sub {
    my ($ep, $ctx, $request, $leg, $from) = @_;
    my $method = $request->method;
    if ($method eq 'INVITE') {
        # without retransmissions: Net::SIP::Dispatcher takes every response
        # to INVITE above 100 for a final one and repeats a 180 at T1 until
        # the ACK; sipp takes a 180 after its 200 for a protocol error
        $disp->deliver($request->create_response(180, { contact => $contact }), leg => $leg, dst_addr => $from,
            do_retransmits => 0);
        $ep->new_response($ctx, $request->create_response(200, {
            contact => $contact,
            'content-type' => 'application/sdp',
        }, $sdp), $leg, $from);
    } elsif ($method eq 'ACK' || $method eq 'BYE' || $method eq 'CANCEL') {
        # BYE and CANCEL were answered by the endpoint
    } else {
        $ep->new_response($ctx, $request->create_response(200), $leg, $from);
    }
});

my $stop = 0;
sub stats { print "STATS contexts=", scalar(keys %{ $ep->{ctx} }), "\n" }
$SIG{TERM} = $SIG{INT} = sub { $stop = 1 };
$SIG{USR1} = \&stats;
print "LISTENING $ip $lport\n";
$loop->loop(3600*24, \$stop);
stats();
