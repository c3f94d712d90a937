#!/usr/bin/env python3
"""A webhook receiver for afreg's notification tests, checking what distribution's receivers
rely on: the media type application/vnd.docker.distribution.events.v2+json and the envelope
{"events": [...]} with each event's id, timestamp, action, target, request, actor and source.

  distribution_receiver.py DIR

Serves on a free loopback port (written to DIR/port). Each request's answer is the status in
DIR/status (200 when absent): 200 records the envelope's events, one JSON line each, in
DIR/events.jsonl; any other status is answered as it is (a failing receiver). A request that
breaks the contract is answered 400 and described in DIR/errors.txt. Every request is counted
in DIR/requests.txt.
"""
import json
import os
import sys
from http.server import BaseHTTPRequestHandler

import receiving

DIR = sys.argv[1]
MEDIA_TYPE = "application/vnd.docker.distribution.events.v2+json"
ACTIONS = {"push", "pull", "mount", "delete"}


def problems(content_type, body):
    if content_type != MEDIA_TYPE:
        return [f"Content-Type {content_type!r}, not {MEDIA_TYPE}"]
    try:
        envelope = json.loads(body)
    except ValueError as e:
        return [f"not JSON: {e}"]
    events = envelope.get("events") if isinstance(envelope, dict) else None
    if not isinstance(events, list) or not events:
        return ["no events list"]
    out = []
    for e in events:
        for field, kind in (("id", str), ("timestamp", str), ("action", str), ("target", dict),
                            ("request", dict), ("actor", dict), ("source", dict)):
            if not isinstance(e.get(field), kind):
                out.append(f"event {e.get('id')}: {field} missing or not a {kind.__name__}")
        if e.get("action") not in ACTIONS:
            out.append(f"event {e.get('id')}: action {e.get('action')!r}")
        target = e.get("target") or {}
        if not target.get("repository") or not target.get("url"):
            out.append(f"event {e.get('id')}: target without repository or url")
        for field in ("id", "addr", "host", "method", "useragent"):
            if field not in (e.get("request") or {}):
                out.append(f"event {e.get('id')}: request.{field} missing")
        for field in ("addr", "instanceID"):
            if field not in (e.get("source") or {}):
                out.append(f"event {e.get('id')}: source.{field} missing")
    return out


def append(name, line):
    receiving.append(DIR, name, line)


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        append("requests.txt", str(len(body)))
        try:
            with open(os.path.join(DIR, "status")) as f:
                status = int(f.read().strip() or "200")
        except FileNotFoundError:
            status = 200
        if status == 200:
            found = problems(self.headers.get("Content-Type"), body)
            if found:
                append("errors.txt", "; ".join(found))
                status = 400
            else:
                for e in json.loads(body)["events"]:
                    append("events.jsonl", json.dumps(e))
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


receiving.serve(DIR, Handler)
