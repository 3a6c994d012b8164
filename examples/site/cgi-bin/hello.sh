#!/bin/sh
# A CGI script in POSIX sh: the header block, a blank line, the body (RFC 3875 §6).
printf 'Content-Type: text/plain; charset=utf-8\r\n\r\n'
printf 'Hello from sh\n'
printf 'QUERY_STRING=%s\n' "$QUERY_STRING"
