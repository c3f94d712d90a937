#!/usr/bin/env python3
"""A CloudEvents receiver for afreg's notification tests, built on the CloudEvents Python SDK
(PyPI `cloudevents`, installed by scripts/setup.sh in ~/.cache/afreg/py): every request is
parsed as an HTTP binary-mode CloudEvent by the SDK, which refuses one without the required
attributes (id, source, type, specversion).

  cloudevents_receiver.py DIR

Serves on a free loopback port (written to DIR/port). A parsed event is recorded as one JSON
line in DIR/events.jsonl (its attributes, with its data under "data") and answered 200; a
request the SDK refuses is answered 400 and described in DIR/errors.txt.
"""
import json
import os
import sys
from http.server import BaseHTTPRequestHandler

import receiving

from cloudevents.core.bindings.http import HTTPMessage, from_binary_event

DIR = sys.argv[1]


def append(name, line):
    receiving.append(DIR, name, line)


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        status = 200
        try:
            event = from_binary_event(HTTPMessage(headers=dict(self.headers.items()), body=body))
            attributes = {k: str(v) for k, v in event.get_attributes().items()}
            for required in ("id", "source", "type", "specversion", "region"):
                if not attributes.get(required):
                    raise ValueError(f"no {required} attribute")
            attributes["data"] = event.get_data()
            append("events.jsonl", json.dumps(attributes))
        except Exception as e:  # the SDK's refusal, whatever its class
            append("errors.txt", f"{type(e).__name__}: {e}")
            status = 400
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


receiving.serve(DIR, Handler)
