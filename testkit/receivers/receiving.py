"""What both test receivers share: a line appended to a file of their directory, and serving
on a free loopback port written to DIR/port (atomically, so the test reads a whole number), or
on the port already there (a receiver started again in its directory, after an outage)."""
import os
from http.server import ThreadingHTTPServer


def append(directory, name, line):
    with open(os.path.join(directory, name), "a") as f:
        f.write(line + "\n")


def serve(directory, handler):
    try:
        with open(os.path.join(directory, "port")) as f:
            port = int(f.read().strip())
    except FileNotFoundError:
        port = 0
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    with open(os.path.join(directory, "port.tmp"), "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(os.path.join(directory, "port.tmp"), os.path.join(directory, "port"))
    server.serve_forever()
