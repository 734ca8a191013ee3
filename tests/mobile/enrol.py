"""Enrolment by one-time code through the generated Python bindings.
Usage: enrol.py BINDINGS_DIR HTTPS_URL WSS_URL CODE FINGERPRINT REPLICA_DIR
Prints {"facility": ..., "patients": n} on success."""
import asyncio
import json
import sys

sys.path.insert(0, sys.argv[1])
import rounds_mobile as rm  # noqa: E402

https_url, wss_url, code, fingerprint, replica_dir = sys.argv[2:7]
replica = rm.RoundsReplica.open(replica_dir, bytes([9] * 32))


class Keychain(rm.TokenStore):
    def __init__(self):
        self.tokens = []

    def save(self, token):
        self.tokens.append(token)


async def main():
    keychain = Keychain()
    enrolled = await replica.enrol(https_url, code, "tablet-py", fingerprint, keychain)
    assert enrolled.facility == "sunnyvale", enrolled
    assert len(keychain.tokens) == 1 and keychain.tokens[0], keychain.tokens
    # The code is single use.
    try:
        await replica.enrol(https_url, code, "tablet-py-2", fingerprint, keychain)
        raise SystemExit("a used code was accepted twice")
    except rm.RoundsError.Refused as e:
        assert e.document == "" and "enrolment" in e.detail, repr(e)
    assert len(keychain.tokens) == 1
    try:
        await replica.enrol("ftp://nowhere", code, "x", fingerprint, keychain)
        raise SystemExit("a bad server URL was accepted")
    except rm.RoundsError.Invalid as e:
        assert (e.entry, e.field) == ("enrolment", "server"), repr(e)
    # The token the keychain got syncs the facility.
    result = await replica.sync(wss_url, keychain.tokens[0], fingerprint, None)
    assert result.unsent == 0, result
    print(json.dumps({"facility": enrolled.facility, "patients": len(replica.patients())}))


asyncio.run(main())
