#!/usr/bin/env perl
# A CGI script in Perl, without CGI.pm (not in every Perl since 5.22).
use strict;
use warnings;
print "Content-Type: text/plain; charset=utf-8\r\n\r\n";
print "Hello from Perl\n";
print "QUERY_STRING=", ($ENV{QUERY_STRING} // ""), "\n";
