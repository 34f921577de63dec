#!/usr/bin/perl
# Perl's Net::SIP as the server side of python -m benchmarks.bench_servers:
#
#   servers.pl register USERS_FILE   Net::SIP::Authorize (401, user2pass from
#                                    lines "user:password") in front of
#                                    Net::SIP::Registrar, in a ReceiveChain
#   servers.pl proxy                 Net::SIP::StatelessProxy alone
#
# One UDP socket on 127.0.0.1 (a free port), "LISTENING <ip> <port>" on
# stdout, serves until SIGTERM/SIGINT. The same work as netsip's
# `netsip proxy` (--users FILE --algorithms MD5 for register).
use strict; use warnings;
use IO::Socket::IP; use Socket qw(SOCK_DGRAM);
use Net::SIP::Leg; use Net::SIP::Dispatcher; use Net::SIP::Dispatcher::Eventloop;
use Net::SIP::Registrar; use Net::SIP::Authorize; use Net::SIP::ReceiveChain;
use Net::SIP::StatelessProxy;

my ($mode, $users_file) = @ARGV;
$| = 1;
# the socket is made here: Net::SIP::Leg would try 5060, 5062.. before port 0
my $sock = IO::Socket::IP->new(
    LocalHost => '127.0.0.1', LocalPort => 0, ReuseAddr => 1,
    Type => SOCK_DGRAM, Proto => 'udp',
) or die "socket: $@";
my $loop = Net::SIP::Dispatcher::Eventloop->new;
my $leg = Net::SIP::Leg->new(sock => $sock, proto => 'udp');
my $disp = Net::SIP::Dispatcher->new([$leg], $loop);

if ($mode eq 'register') {
    my %users;
    open(my $fh, '<', $users_file) or die "$users_file: $!";
    while (<$fh>) {
        chomp;
        next if /^\s*(#|$)/;
        my ($u, $p) = split(/:/, $_, 2);
        $users{$u} = $p;
    }
    close($fh);
    my $auth = Net::SIP::Authorize->new(
        dispatcher => $disp, realm => 'netsip', user2pass => \%users);
    my $reg = Net::SIP::Registrar->new(
        dispatcher => $disp, min_expires => 30, max_expires => 86400);
    $disp->set_receiver(Net::SIP::ReceiveChain->new([$auth, $reg]));
} elsif ($mode eq 'proxy') {
    $disp->set_receiver(Net::SIP::StatelessProxy->new(dispatcher => $disp));
} else {
    die "usage: $0 register USERS_FILE | proxy\n";
}

my $stop = 0;
$SIG{TERM} = $SIG{INT} = sub { $stop = 1 };
print "LISTENING ", $sock->sockhost, " ", $sock->sockport, "\n";
$loop->loop(3600, \$stop);
