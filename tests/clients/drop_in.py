"""A Cliniko client's calls, unchanged but for the base URL, made through the gateway.

Run by tests/it/dropin.rs (cargo test) against a running gateway in front of the Cliniko
stand-in. Two real clients, each the way Cliniko's own docs and SDKs use them:
- python `requests` with `auth=(jwt, "")` (HTTP Basic: the JWT where the API key went);
- `curl -u "$JWT:"`, with Cliniko's filter syntax typed raw (`-g` only stops curl's globbing).

Each lists patients following `links.next` to the end, then creates, reads, updates and
deletes a patient. Exits non-zero on the first surprise; prints one JSON summary line last.

Usage: drop_in.py <gateway base URL>   (the JWT comes in the environment variable JWT)
"""

import json
import os
import subprocess
import sys

import requests

BASE = sys.argv[1].rstrip("/")
JWT = os.environ["JWT"]
HEADERS = {"Accept": "application/json", "User-Agent": "Drop-in test (tests@example.invalid)"}


def check(cond, what):
    if not cond:
        sys.exit(f"FAILED: {what}")


def with_requests():
    """Paginate and write with requests, the way the httpx/requests Cliniko clients do."""
    s = requests.Session()
    s.auth = (JWT, "")
    s.headers.update(HEADERS)
    url, pages, seen, total = f"{BASE}/v1/patients?per_page=50", 0, [], None
    while url:
        check(url.startswith(BASE + "/v1/"), f"links.next points at the gateway: {url}")
        r = s.get(url, timeout=10)
        check(r.status_code == 200, f"GET {url}: {r.status_code} {r.text[:200]}")
        doc = r.json()
        total = doc["total_entries"]
        seen += [p["id"] for p in doc["patients"]]
        check(all(isinstance(i, str) for i in seen), "ids stay strings")
        pages += 1
        url = doc["links"].get("next")
    check(len(seen) == total == len(set(seen)), f"{len(seen)} patients of {total}")

    r = s.post(f"{BASE}/v1/patients", json={"first_name": "Dropin", "last_name": "Requests"}, timeout=10)
    check(r.status_code == 201, f"POST: {r.status_code} {r.text[:200]}")
    location = r.headers["Location"]
    check(location.startswith(BASE + "/v1/patients/"), f"Location on the gateway: {location}")
    pid = r.json()["id"]
    r = s.patch(f"{BASE}/v1/patients/{pid}", json={"last_name": "Patched"}, timeout=10)
    check(r.status_code == 200 and r.json()["last_name"] == "Patched", f"PATCH: {r.status_code}")
    r = s.get(location, timeout=10)
    check(r.status_code == 200 and r.json()["last_name"] == "Patched", f"GET Location: {r.status_code}")
    r = s.delete(f"{BASE}/v1/patients/{pid}", timeout=10)
    check(r.status_code == 204, f"DELETE: {r.status_code}")
    r = s.get(f"{BASE}/v1/patients/{pid}", timeout=10)
    check(r.status_code == 404, f"GET after DELETE: {r.status_code}")
    r = s.post(f"{BASE}/v1/patients", json={"last_name": "NoFirstName"}, timeout=10)
    check(r.status_code == 422 and "errors" in r.json(), f"422 passes through: {r.status_code}")
    return {"pages": pages, "patients": len(seen), "created": pid}


def curl(*args, body=None):
    """One curl call with -u "$JWT:"; returns (status, headers text, body text)."""
    cmd = ["curl", "-sS", "-g", "-u", f"{JWT}:", "-D", "-", "-H", "Accept: application/json",
           "-H", "User-Agent: " + HEADERS["User-Agent"], *args]
    if body is not None:
        cmd += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
    # Bytes, not text=True: universal newlines would turn the CRLFs of the head into LFs.
    out = subprocess.run(cmd, capture_output=True, timeout=30, check=True).stdout.decode()
    head, _, text = out.partition("\r\n\r\n")
    return int(head.split()[1]), head.lower(), text


def with_curl():
    url, pages = f"{BASE}/v1/patients?per_page=50", 0
    while url:
        status, _, text = curl(url)
        check(status == 200, f"curl GET {url}: {status}")
        pages += 1
        url = json.loads(text)["links"].get("next")
    status, head, text = curl("-X", "POST", f"{BASE}/v1/patients", body={"first_name": "Dropin", "last_name": "Curl"})
    check(status == 201 and f"location: {BASE.lower()}/v1/patients/" in head, f"curl POST: {status}")
    pid = json.loads(text)["id"]
    status, _, text = curl("-X", "PATCH", f"{BASE}/v1/patients/{pid}", body={"last_name": "Patched"})
    check(status == 200 and json.loads(text)["last_name"] == "Patched", f"curl PATCH: {status}")
    status, _, _ = curl("-X", "DELETE", f"{BASE}/v1/patients/{pid}")
    check(status == 204, f"curl DELETE: {status}")
    # Cliniko's filter syntax as people type it: raw > >= < and quotes.
    filters = [
        "q[]=updated_at:>2024-01-01T00:00:00Z",
        "q[]=date_of_birth:>=1980-01-01&q[]=date_of_birth:<1990-01-01",
        "q[]=last_name:\"O'Brien\"",
    ]
    for q in filters:
        status, _, text = curl(f"{BASE}/v1/patients?{q}")
        check(status == 200 and "patients" in json.loads(text), f"curl filter {q}: {status} {text[:200]}")
    return {"pages": pages, "created": pid, "filters": len(filters)}


if __name__ == "__main__":
    summary = {"requests": with_requests(), "curl": with_curl()}
    print(json.dumps(summary))
