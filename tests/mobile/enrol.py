"""Enrolment by one-time code through the generated Python bindings.
Usage: enrol.py BINDINGS_DIR HTTPS_URL WSS_URL CODE FINGERPRINT REPLICA_DIR
Prints {"facility": ..., "patients": n} on success."""
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


keychain = Keychain()
enrolled = replica.enrol(https_url, code, "tablet-py", fingerprint, keychain)
assert enrolled.facility == "sunnyvale", enrolled
assert len(keychain.tokens) == 1 and keychain.tokens[0], keychain.tokens
# The code is single use.
try:
    replica.enrol(https_url, code, "tablet-py-2", fingerprint, keychain)
    raise SystemExit("a used code was accepted twice")
except rm.RoundsError.Refused as e:
    assert "enrolment" in str(e), str(e)
assert len(keychain.tokens) == 1
try:
    replica.enrol("ftp://nowhere", code, "x", fingerprint, keychain)
    raise SystemExit("a bad server URL was accepted")
except rm.RoundsError.Invalid as e:
    assert "server" in str(e), str(e)
# The token the keychain got syncs the facility.
result = replica.sync(wss_url, keychain.tokens[0], fingerprint, None)
assert result.unsent == 0, result
print(json.dumps({"facility": enrolled.facility, "patients": len(replica.patients())}))
