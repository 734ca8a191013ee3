#!/usr/bin/env python3
"""Writes mixed.json: a deterministic data file of CCM, PCM and RPM patients with every feature the
engine bills by before the 2026 code families (stays, deaths, revocations, lanes, practitioners of
record, practices). Its bills in this directory were made before those families were added; the
test `bills_as_before` checks that the engine still produces them byte for byte."""
import json, random

rng = random.Random(2026)
staff = ["rn1", "rn2", "lpn1", "aide"]
d = {
    "format": "rounds-data/1",
    "facility": {"id": "mixed", "name": "Mixed", "timezone": "America/Chicago", "place_of_service": "32"},
    "practices": [
        {"id": "north", "name": "North", "practitioners": ["dr-a"], "confirms_transition_months": True},
        {"id": "south", "name": "South", "practitioners": ["dr-b", "np-c"]},
    ],
    "practitioners": [
        {"id": "dr-a", "name": "A", "npi": "1234567893"},
        {"id": "dr-b", "name": "B", "npi": "1987654328"},
        {"id": "np-c", "name": "C", "npi": "1245319599"},
    ],
    "staff": [{"id": s, "name": s, "role": "clinical", "counts_for_billing": s != "aide"} for s in staff],
    "patients": [], "interactions": [], "readings": [], "corrections": [],
}
n = 0
def uid():
    global n
    n += 1
    return "0193a000-0000-7000-8000-%012x" % n
codes = ["I10", "E11.9", "I50.9", "N18.30", "J44.9", "F03.90", "E78.5", "J06.9"]
for i in range(160):
    pid = "p-%03d" % i
    doc = rng.choice(["dr-a", "dr-b", "np-c"])
    conds = [{"icd10": c, "chronic": rng.random() < 0.8} for c in rng.sample(codes, rng.randint(1, 4))]
    p = {"id": pid, "name": "Patient %d" % i, "mrn": str(10000 + i), "billing_practitioner": doc,
         "conditions": conds, "consents": []}
    progs = []
    if rng.random() < 0.7: progs.append("ccm")
    if rng.random() < 0.2: progs.append("pcm")
    if rng.random() < 0.4: progs.append("rpm")
    for prog in progs:
        c = {"program": prog, "given_on": "2026-%02d-%02d" % (rng.randint(8, 11), rng.randint(1, 28)), "method": "verbal", "by": "rn1"}
        if rng.random() < 0.1:
            c["given_on"] = "2026-%02d-%02d" % (rng.randint(8, 10), rng.randint(1, 28))
            c["revoked_on"] = "2026-11-%02d" % rng.randint(1, 28)
        p["consents"].append(c)
    if rng.random() < 0.9: p["initiating_visit_on"] = "2026-0%d-15" % rng.randint(1, 9)
    if rng.random() < 0.9:
        p["care_plan"] = {"established_on": "2026-0%d-20" % rng.randint(1, 9), "revised_on": ["2026-11-05"] if rng.random() < 0.3 else []}
    if rng.random() < 0.15: p["complex_ccm_months"] = ["2026-11"]
    if rng.random() < 0.05: p["ccm_lane"] = {"2026-11": "practitioner"}
    if "pcm" in progs: p["pcm_condition"] = conds[0]["icd10"]
    if "rpm" in progs or rng.random() < 0.05:
        p["rpm"] = {"device_setup_on": "2026-%02d-%02d" % (rng.randint(9, 11), rng.randint(1, 28)), "devices": ["dev-%d" % i]}
    if rng.random() < 0.1:
        s = rng.randint(1, 20)
        p["stays"] = [{"kind": rng.choice(["part_a", "inpatient"]), "from": "2026-11-%02d" % s, "to": "2026-11-%02d" % (s + rng.randint(0, 8))}]
    if rng.random() < 0.05: p["died_on"] = "2026-11-%02d" % rng.randint(2, 28)
    if rng.random() < 0.06:
        other = rng.choice([x for x in ["dr-a", "dr-b", "np-c"] if x != doc])
        p["practitioners_of_record"] = [{"practitioner": other, "from": "2026-11-%02d" % rng.randint(2, 25)}]
        p["consents"].append({"program": "ccm", "given_on": "2026-11-26", "method": "verbal"})
    d["patients"].append(p)
    for prog in progs + (["ccm"] if rng.random() < 0.1 else []):
        for _ in range(rng.randint(0, 6)):
            day = rng.randint(1, 30); h = rng.randint(7, 18); m = rng.randint(0, 59)
            mins = rng.randint(1, 25); secs = rng.randint(0, 59)
            who = rng.choice(staff + [doc])
            start = "2026-%s-%02dT%02d:%02d:00-06:00" % (rng.choice(["10", "11", "11", "11", "12"]), day, h, m)
            eh, em = h + (m + mins) // 60, (m + mins) % 60
            end = start[:11] + "%02d:%02d:%02d-06:00" % (eh, em, secs)
            d["interactions"].append({"id": uid(), "patient": pid, "staff": who, "program": prog,
                "started_at": start, "ended_at": end, "interactive": rng.random() < 0.7})
    if "rpm" in p.get("rpm", {}) or "rpm" in progs:
        for _ in range(rng.randint(0, 40)):
            mo = rng.choice(["10", "11", "11", "12"])
            src = "device" if rng.random() < 0.9 else "manual"
            r = {"id": uid(), "patient": pid, "kind": "weight", "value": round(rng.uniform(50, 110), 1), "unit": "kg",
                 "measured_at": "2026-%s-%02dT%02d:10:00-06:00" % (mo, rng.randint(1, 30), rng.randint(0, 23)), "source": src}
            if src == "device": r["device"] = "dev-%d" % i
            d["readings"].append(r)
for k in range(5):
    x = rng.choice(d["interactions"])
    d["corrections"].append({"id": uid(), "target": x["id"], "kind": "void", "at": "2026-11-29T10:00:00-06:00", "by": "rn1"})
print(json.dumps(d, indent=2))
