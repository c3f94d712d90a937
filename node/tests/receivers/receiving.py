"""What both test receivers share: a line appended to a file of their directory, and serving
on a free loopback port written to DIR/port (atomically, so the test reads a whole number)."""
import os
from http.server import ThreadingHTTPServer


def append(directory, name, line):
    with open(os.path.join(directory, name), "a") as f:
        f.write(line + "\n")


def serve(directory, handler):
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    with open(os.path.join(directory, "port.tmp"), "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(os.path.join(directory, "port.tmp"), os.path.join(directory, "port"))
    server.serve_forever()
