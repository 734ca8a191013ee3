#!/usr/bin/env python3
"""Generate examples/sunnyvale.json: one facility, 20 residents, a realistic November 2026.

Deterministic (fixed seed, ids derived from a counter), so the file only changes when this does.
Run: python3 scripts/gen_sunnyvale.py > examples/sunnyvale.json
"""
import json, random, uuid
from datetime import datetime, timedelta, timezone, date

rng = random.Random(2026_11)
counter = [0]

def uid(ts: datetime) -> str:
    # UUIDv7 layout: 48-bit ms timestamp, version 7, variant, then a counter for determinism.
    counter[0] += 1
    ms = int(ts.timestamp() * 1000)
    n = counter[0]
    b = ms.to_bytes(6, "big") + bytes([0x70 | (n >> 8 & 0x0F), n & 0xFF, 0x80]) + n.to_bytes(7, "big")
    return str(uuid.UUID(bytes=b))

def npi(base9: str) -> str:
    digits = [int(c) for c in "80840" + base9]
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 0:
            d *= 2
            if d > 9: d -= 9
        total += d
    return base9 + str((10 - total % 10) % 10)

EST, EDT = timezone(timedelta(hours=-5)), timezone(timedelta(hours=-4))
def local(y, m, d, hh, mm, ss=0):
    # America/New_York: DST ended 2026-11-01 02:00 local.
    tz = EDT if (m, d) < (11, 1) or ((m, d) == (11, 1) and hh < 1) else EST
    if m < 11 and m > 3: tz = EDT
    return datetime(y, m, d, hh, mm, ss, tzinfo=tz)

practitioners = [
    {"id": "dr-smith", "name": "Alan Smith, MD", "npi": npi("123456789")},
    {"id": "np-garcia", "name": "Maria Garcia, NP", "npi": npi("198765432")},
]
staff = [
    {"id": "rn-lee", "name": "Dana Lee, RN", "role": "clinical", "counts_for_billing": True},
    {"id": "rn-okafor", "name": "Chidi Okafor, RN", "role": "clinical", "counts_for_billing": True},
    {"id": "lpn-ruiz", "name": "Ana Ruiz, LPN", "role": "clinical", "counts_for_billing": True},
    {"id": "aide-1", "name": "Facility aide", "role": "clinical", "counts_for_billing": False},
    {"id": "desk-1", "name": "Front desk", "role": "non_clinical", "counts_for_billing": False},
]
first = ["Jane", "Robert", "Mary", "James", "Patricia", "John", "Linda", "William", "Barbara", "Richard",
         "Susan", "Joseph", "Dorothy", "Thomas", "Margaret", "Charles", "Betty", "George", "Ruth", "Edward"]
last = ["Doe", "Miller", "Wilson", "Moore", "Taylor", "Anderson", "Thomas", "Jackson", "White", "Harris",
        "Martin", "Thompson", "Young", "Allen", "King", "Wright", "Scott", "Green", "Baker", "Adams"]
chronic = ["I10", "E11.9", "I50.9", "J44.9", "N18.30", "E78.5", "F03.90", "I48.91", "M17.0", "E03.9"]

# Each resident gets a scenario: target CCM minutes, RPM reading days, and special facts.
scenarios = [
    dict(ccm=23),                                  # p-001 standard 99490
    dict(ccm=45),                                  # p-002 99490 + 99439
    dict(ccm=72),                                  # p-003 99490 + 99439x2
    dict(ccm=17),                                  # p-004 needs 3 more minutes
    dict(ccm=95, complex=True),                    # p-005 complex 99487 + 99489
    dict(ccm=0, practitioner=64),                  # p-006 practitioner lane 99491 + 99437
    dict(ccm=31, rpm_days=20, rpm_min=24),         # p-007 CCM + RPM 99454, 99457
    dict(rpm_days=9, rpm_min=14),                  # p-008 RPM only: 99445 + 99470
    dict(rpm_days=1, rpm_min=5),                   # p-009 RPM only: too few days, too few minutes
    dict(ccm=28, part_a=True),                     # p-010 Part A stay mid-month
    dict(ccm=26, died=True),                       # p-011 died mid-month
    dict(ccm=35, no_consent=True),                 # p-012 no CCM consent on file
    dict(ccm=24, revoked=True),                    # p-013 consent revoked mid-month (still billable)
    dict(ccm=22, one_condition=True),              # p-014 only one chronic condition
    dict(pcm=41),                                  # p-015 PCM 99426
    dict(ccm=40),                                  # p-016 exactly 40 → 99439
    dict(ccm=21, rpm_days=17, rpm_min=44),         # p-017 RPM 99457 + 99458
    dict(ccm=19, aide=15),                         # p-018 aide time does not count
    dict(ccm=30, cross_midnight=True),             # p-019 entry crossing into the month
    dict(ccm=0),                                   # p-020 enrolled, nothing logged yet
]

patients, interactions, readings = [], [], []
for n, sc in enumerate(scenarios, start=1):
    pid = f"p-{n:03d}"
    conds = rng.sample(chronic, 1 if sc.get("one_condition") else rng.choice([2, 2, 3]))
    bp = "np-garcia" if n % 4 == 0 else "dr-smith"
    p = {
        "id": pid,
        "name": f"{first[n-1]} {last[n-1]}",
        "birth_date": date(1930 + rng.randrange(20), rng.randrange(1, 13), rng.randrange(1, 28)).isoformat(),
        "mrn": str(100000 + n * 37),
        "billing_practitioner": bp,
        "conditions": [{"icd10": c, "chronic": True} for c in conds],
        "consents": [],
        "initiating_visit_on": "2026-01-10",
        "care_plan": {"established_on": "2026-01-12", "revised_on": []},
        "complex_ccm_months": [],
        "ccm_lane": {},
        "pcm_condition": None,
        "rpm": None,
        "stays": [],
        "died_on": None,
    }
    if "ccm" in sc and not sc.get("no_consent"):
        p["consents"].append({"program": "ccm", "given_on": "2026-01-10", "method": "verbal", "by": "rn-lee",
                              "revoked_on": "2026-11-15" if sc.get("revoked") else None})
    if sc.get("complex"):
        p["complex_ccm_months"] = ["2026-11"]
        p["care_plan"]["revised_on"] = ["2026-11-03"]
    if sc.get("practitioner"):
        p["ccm_lane"] = {"2026-11": "practitioner"}
    if sc.get("pcm"):
        p["pcm_condition"] = conds[0]
        p["consents"].append({"program": "pcm", "given_on": "2026-03-02", "method": "written", "by": "rn-okafor", "revoked_on": None})
    if sc.get("rpm_days"):
        setup = date(2026, 10, 20) if n != 17 else date(2026, 10, 15)
        p["rpm"] = {"device_setup_on": setup.isoformat(), "devices": [f"cuff-{n:02d}"]}
        p["consents"].append({"program": "rpm", "given_on": "2026-10-18", "method": "verbal", "by": "rn-lee", "revoked_on": None})
    if sc.get("part_a"):
        p["stays"] = [{"kind": "part_a", "from": "2026-11-05", "to": "2026-11-12"}]
    if sc.get("died"):
        p["died_on"] = "2026-11-18"
    patients.append(p)

    def log(who, program, minutes, interactive=True, days=None, activity="phone_call", note=None):
        # Split `minutes` into 2-4 entries with seconds, spread over the month.
        if minutes <= 0: return
        parts = max(1, min(4, minutes // 9))
        secs = minutes * 60 + rng.randrange(0, 50)
        cuts = sorted(rng.sample(range(60, secs - 60), parts - 1)) if parts > 1 else []
        bounds = [0] + cuts + [secs]
        for k in range(parts):
            day = (days or list(range(2, 28)))[rng.randrange(len(days or range(2, 28)))]
            start = local(2026, 11, day, rng.randrange(9, 16), rng.randrange(0, 60), rng.randrange(0, 60))
            dur = bounds[k + 1] - bounds[k]
            end = start + timedelta(seconds=dur)
            interactions.append({
                "id": uid(start), "patient": pid, "staff": who, "program": program,
                "started_at": start.isoformat(), "ended_at": end.isoformat(),
                "interactive": interactive and k == 0, "activity": activity if k == 0 else "care_coordination",
                "note": note or ("Reviewed medications and symptoms with resident." if k == 0 else "Coordinated with pharmacy and family."),
            })

    ok_days = None
    if sc.get("part_a"): ok_days = [2, 3, 4, 13, 14, 20, 25]
    if sc.get("died"): ok_days = [2, 5, 9, 12, 16]
    rn = ["rn-lee", "rn-okafor", "lpn-ruiz"][n % 3]
    log(rn, "ccm", sc.get("ccm", 0), days=ok_days)
    log(bp, "ccm", sc.get("practitioner", 0))
    log(rn, "pcm", sc.get("pcm", 0))
    log("rn-okafor", "rpm", sc.get("rpm_min", 0), activity="rpm_review")
    log("aide-1", "ccm", sc.get("aide", 0))
    if sc.get("part_a"):
        start = local(2026, 11, 8, 10, 0)
        interactions.append({"id": uid(start), "patient": pid, "staff": rn, "program": "ccm",
                             "started_at": start.isoformat(), "ended_at": (start + timedelta(minutes=15)).isoformat(),
                             "interactive": True, "activity": "phone_call", "note": "Call during Part A stay (not billable)."})
    if sc.get("cross_midnight"):
        start = local(2026, 10, 31, 23, 50)
        interactions.append({"id": uid(start), "patient": pid, "staff": rn, "program": "ccm",
                             "started_at": start.isoformat(), "ended_at": local(2026, 11, 1, 0, 20).isoformat(),
                             "interactive": True, "activity": "phone_call", "note": "Night call about chest discomfort."})
    if sc.get("rpm_days"):
        # Days in the first 30-day period (which ends in November), then a few in the next one.
        setup = date.fromisoformat(p["rpm"]["device_setup_on"])
        first_period = [setup + timedelta(days=k) for k in range(30)]
        days = sorted(rng.sample(first_period, sc["rpm_days"]))
        days += [d for d in (date(2026, 11, 20), date(2026, 11, 23), date(2026, 11, 26)) if d > first_period[-1]]
        for day in days:
            for _ in range(rng.choice([1, 1, 2])):
                t = local(day.year, day.month, day.day, rng.randrange(6, 21), rng.randrange(0, 60))
                sys_ = rng.randrange(118, 162)
                readings.append({"id": uid(t), "patient": pid, "kind": "blood_pressure",
                                 "systolic": sys_, "diastolic": sys_ - rng.randrange(40, 60), "unit": "mm[Hg]",
                                 "measured_at": t.isoformat(), "device": f"cuff-{n:02d}", "source": "device"})
        t = local(2026, 11, 29, 9, 30)
        readings.append({"id": uid(t), "patient": pid, "kind": "weight", "value": 71.4, "unit": "kg",
                         "measured_at": t.isoformat(), "device": None, "source": "manual"})

interactions.sort(key=lambda i: i["started_at"])
readings.sort(key=lambda r: r["measured_at"])
data = {
    "format": "rounds-data/1",
    "facility": {"id": "sunnyvale", "name": "Sunnyvale Nursing Home", "timezone": "America/New_York", "place_of_service": "32"},
    "practitioners": practitioners, "staff": staff, "patients": patients,
    "interactions": interactions, "readings": readings,
}
print(json.dumps(data, indent=2))
