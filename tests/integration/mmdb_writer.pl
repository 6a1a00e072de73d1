#!/usr/bin/perl
# Writes a MaxMind DB (.mmdb) file from a JSON map of network -> record, for the GeoIP
# tests: exact, tiny databases whose answers the tests know.
#   perl mmdb_writer.pl OUT.mmdb MAP.json
#   MAP.json: { "198.51.100.0/24": { "country_code": "KP" },
#               "2001:db8:1::/48": { "country_code": "KP" },
#               "203.0.113.0/24":  { "autonomous_system_number": 64500 } }
# IPv4 networks go into the IPv4-mapped part of an IPv6 tree (as MaxMind's own files),
# so both families are found with one file. Reserved ranges are kept: the tests use
# the documentation networks (RFC 5737, RFC 3849). Value types: integers are uint32,
# other scalars strings, objects maps (nested), arrays of strings arrays.
# Needs libmaxmind-db-writer-perl (scripts/deps.sh installs it).
use strict;
use warnings;
use JSON::PP;
use MaxMind::DB::Writer::Tree;

die "usage: $0 OUT.mmdb MAP.json [DATABASE_TYPE]\n" unless @ARGV >= 2;
my ($out, $map_file, $db_type) = @ARGV;
$db_type //= 'mailgate-test';

open my $in, '<:raw', $map_file or die "$map_file: $!\n";
my $json = do { local $/; <$in> };
close $in;
my $map = JSON::PP->new->decode($json);
die "$map_file: a JSON object of network -> record expected\n" unless ref $map eq 'HASH';

my %types;
sub note_types {
    my ($record) = @_;
    for my $k (keys %$record) {
        my $v = $record->{$k};
        if (ref $v eq 'HASH') {
            $types{$k} = 'map';
            note_types($v);
        } elsif (ref $v eq 'ARRAY') {
            $types{$k} = ['array', 'utf8_string'];
        } elsif (JSON::PP::is_bool($v)) {
            $types{$k} = 'boolean';
        } elsif (defined $v && $v =~ /^\d+$/ && $v <= 4294967295) {
            $types{$k} //= 'uint32';
        } else {
            $types{$k} = 'utf8_string';
        }
    }
}
note_types($_) for values %$map;

my $tree = MaxMind::DB::Writer::Tree->new(
    ip_version              => 6,
    record_size             => 28,
    database_type           => $db_type,
    languages               => ['en'],
    description             => { en => 'mailgate test database' },
    remove_reserved_networks => 0,
    alias_ipv6_to_ipv4      => 0,
    map_key_type_callback   => sub { $types{ $_[0] } // 'utf8_string' },
);

# IPv4 networks as ::a.b.c.d/(96 + prefix); wider networks first, so that a narrower
# one inserted later overrides its part.
my %tree_net;
for my $net (keys %$map) {
    $tree_net{$net} = $net =~ m{^(\d+\.\d+\.\d+\.\d+)/(\d+)$} ? "::$1/" . ($2 + 96) : $net;
}
for my $net (sort { (split m{/}, $tree_net{$a})[1] <=> (split m{/}, $tree_net{$b})[1] } keys %$map) {
    $tree->insert_network($tree_net{$net}, $map->{$net});
}

open my $fh, '>:raw', "$out.tmp" or die "$out.tmp: $!\n";
$tree->write_tree($fh);
close $fh or die "$out.tmp: $!\n";
rename "$out.tmp", $out or die "rename $out: $!\n";
