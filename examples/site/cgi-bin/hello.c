/* A CGI script in C. Build: cc -O2 -o cgi-bin/hello cgi-bin/hello.c */
#include <stdio.h>
#include <stdlib.h>

int main(void) {
    const char *query = getenv("QUERY_STRING");
    printf("Content-Type: text/plain; charset=utf-8\r\n\r\n");
    printf("Hello from C\n");
    printf("QUERY_STRING=%s\n", query ? query : "");
    return 0;
}
