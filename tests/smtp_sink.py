"""A local SMTP sink for the alert tests (aiosmtpd) on 127.0.0.1.

Usage: python3 smtp_sink.py PORT OUT_DIR
The first message is refused with a temporary failure (451), every later one is written to
OUT_DIR as <n>.eml. Prints "ready" when listening.
"""
import sys
import time
from pathlib import Path

from aiosmtpd.controller import Controller


class Sink:
    def __init__(self, out: Path):
        self.out = out
        self.seen = 0
        self.stored = 0

    async def handle_DATA(self, server, session, envelope):
        self.seen += 1
        if self.seen == 1:
            return "451 4.3.0 Temporary failure, try again later"
        self.stored += 1
        (self.out / f"{self.stored}.eml").write_bytes(envelope.original_content or envelope.content)
        return "250 OK"


def main():
    port, out = int(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    controller = Controller(Sink(out), hostname="127.0.0.1", port=port)
    controller.start()
    print("ready", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
