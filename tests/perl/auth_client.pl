#!/usr/bin/perl
# auth_client.pl - Perl's Net::SIP::Simple as a digest client for the tests
# of netsip.authorize: it registers --user with --password at --registrar
# (ip:port), from a leg on 127.0.0.1 (a free port), and prints
#     REGISTERED <expires>        on a 2xx
#     FAILED <error>              otherwise
# Exit 0 if registered, 1 if not; --timeout bounds the whole run.

use strict;
use warnings;

use Getopt::Long qw(GetOptions);
use IO::Socket::IP;
use Socket qw(SOCK_DGRAM);
use Net::SIP;

$| = 1;

my %opt = (timeout => 10, realm => 'example.org', user => 'alice', password => 'wonderland');
GetOptions(
    'registrar=s' => \$opt{registrar},
    'realm=s'     => \$opt{realm},
    'user=s'      => \$opt{user},
    'password=s'  => \$opt{password},
    'timeout=f'   => \$opt{timeout},
) && $opt{registrar} or die "usage: $0 --registrar IP:PORT [--user U --password P]\n";

my $sock = IO::Socket::IP->new(
    LocalHost => '127.0.0.1', LocalPort => 0, Type => SOCK_DGRAM, Proto => 'udp',
) or die "cannot create a UDP socket: $@\n";
my $leg = Net::SIP::Leg->new(sock => $sock, proto => 'udp');
my $ua = Net::SIP::Simple->new(
    from      => "sip:$opt{user}\@$opt{realm}",
    leg       => $leg,
    registrar => "sip:$opt{registrar}",
    auth      => [ $opt{user}, $opt{password} ],
);
local $SIG{ALRM} = sub { print "FAILED timeout\n"; exit 1 };
alarm($opt{timeout});
my $expires = $ua->register(expires => 60);
alarm(0);
if (defined $expires) {
    print "REGISTERED $expires\n";
    exit 0;
}
print "FAILED ", ($ua->error // 'unknown'), "\n";
exit 1;
