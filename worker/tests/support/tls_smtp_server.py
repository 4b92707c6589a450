"""A real SMTP server with TLS for the worker's tests (aiosmtpd).

Usage: tls_smtp_server.py MODE PORT CERT KEY OUTDIR
MODE is `starttls` (STARTTLS offered and required before MAIL), `tls`
(implicit TLS from the first byte) or `plain` (no STARTTLS offered).
Each accepted message is written to OUTDIR/NNNNNN.eml exactly as received.
Prints `ready` once it listens.
"""
import itertools
import os
import ssl
import sys
import time

from aiosmtpd.controller import Controller

mode, port, cert, key, outdir = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(cert, key)
numbers = itertools.count()


class Keep:
    async def handle_DATA(self, server, session, envelope):
        path = os.path.join(outdir, "%06d.eml" % next(numbers))
        with open(path + ".tmp", "wb") as f:
            f.write(envelope.original_content or envelope.content)
        os.rename(path + ".tmp", path)
        return "250 2.0.0 kept"


options = {"starttls": {"tls_context": context, "require_starttls": True}, "tls": {"ssl_context": context}, "plain": {}}[mode]
controller = Controller(Keep(), hostname="127.0.0.1", port=port, **options)
controller.start()
print("ready", flush=True)
while True:
    time.sleep(3600)
