#!/usr/bin/env python3
"""Round trip of two OCI artifacts through a registry with oras-py (0.2.x), over plain HTTP.

1. Pushes artifact A1 (an SBOM-like file) with an `artifactType` and the empty config.
   oras-py's push() cannot set artifactType, so A1's manifest is built here and uploaded
   with the client's own upload_blob()/upload_manifest().
2. Pushes artifact A2 with oras-py's push(), whose `subject` points at A1.
3. Fetches the referrers of A1 and checks A2 is listed.
4. Pulls both back with oras-py's pull() and compares every file byte for byte.

Prints one JSON line {"a1": {...}, "a2": {...}} on success; exits non-zero with a message
on any mismatch. Usage: oras_roundtrip.py HOST:PORT REPOSITORY WORKDIR
Credentials, if the registry needs them: ORAS_USER and ORAS_PASSWORD.
"""

import hashlib
import json
import os
import sys
from dataclasses import dataclass

import oras.oci
import oras.provider

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
EMPTY = "application/vnd.oci.empty.v1+json"
SBOM_TYPE = "application/vnd.berth.test.sbom.v1+json"
SIG_CONFIG_TYPE = "application/vnd.berth.test.sig.config.v1+json"
TITLE = "org.opencontainers.image.title"


def fail(message):
    print(f"oras_roundtrip: {message}", file=sys.stderr)
    sys.exit(1)


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def check_status(what, response, *expected):
    if response.status_code not in expected:
        fail(f"{what}: expected {expected}, got {response.status_code}: {response.text[:500]}")


@dataclass
class Pushed:
    tag: str
    digest: str
    files: dict


def push_a1(reg, host, repo, workdir):
    """A1: built by hand so it can carry artifactType; uploaded with oras-py's calls."""
    src = os.path.join(workdir, "a1")
    os.makedirs(src, exist_ok=True)
    sbom = json.dumps({"packages": [{"name": "berth", "nonce": os.urandom(16).hex()}]}).encode()
    sbom += os.urandom(200_000)
    sbom_path = os.path.join(src, "sbom.json")
    write(sbom_path, sbom)
    empty_path = os.path.join(src, "empty.json")
    write(empty_path, b"{}")

    container = reg.get_container(f"{host}/{repo}:a1")
    layer = {
        "mediaType": SBOM_TYPE,
        "digest": sha256(sbom),
        "size": len(sbom),
        "annotations": {TITLE: "sbom.json"},
    }
    # oras-py answers a HEAD 200 instead of uploading when the blob already exists.
    check_status("upload A1 layer", reg.upload_blob(sbom_path, container, layer), 200, 201)
    config = {"mediaType": EMPTY, "digest": sha256(b"{}"), "size": 2}
    check_status("upload empty config", reg.upload_blob(empty_path, container, config), 200, 201)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": SBOM_TYPE,
        "config": config,
        "layers": [layer],
        "annotations": {"org.example.kind": "sbom"},
    }
    response = reg.upload_manifest(manifest, container)
    check_status("upload A1 manifest", response, 201)
    # requests serializes json= with json.dumps defaults; that is what the registry got.
    body = json.dumps(manifest).encode()
    digest = sha256(body)
    got = response.headers.get("Docker-Content-Digest")
    if got != digest:
        fail(f"A1 Docker-Content-Digest {got!r}, expected {digest}")
    return Pushed("a1", digest, {"sbom.json": sbom}), manifest, len(body)


def push_a2(reg, host, repo, workdir, a1_digest, a1_size):
    """A2: pushed with oras-py's push(), with `subject` = A1."""
    src = os.path.join(workdir, "a2")
    os.makedirs(src, exist_ok=True)
    sig = os.urandom(1_500_000)
    write(os.path.join(src, "signature.bin"), sig)
    write(os.path.join(src, "config.json"), json.dumps({"signer": "berth-tests"}).encode())
    subject = oras.oci.Subject(mediaType=OCI_MANIFEST, digest=a1_digest, size=a1_size)
    cwd = os.getcwd()
    os.chdir(src)
    try:
        response = reg.push(
            target=f"{host}/{repo}:a2",
            files=["signature.bin:application/vnd.berth.test.sig.v1"],
            manifest_config=f"config.json:{SIG_CONFIG_TYPE}",
            manifest_annotations={"org.example.signer": "ci"},
            subject=subject,
            quiet=True,
        )
    finally:
        os.chdir(cwd)
    check_status("push A2", response, 201)
    digest = response.headers.get("Docker-Content-Digest", "")
    if not digest.startswith("sha256:"):
        fail(f"push A2: Docker-Content-Digest {digest!r}")
    oci_subject = response.headers.get("OCI-Subject")
    if oci_subject != a1_digest:
        fail(f"push A2 with subject: OCI-Subject {oci_subject!r}, expected {a1_digest}")
    return Pushed("a2", digest, {"signature.bin": sig})


def check_referrers(reg, host, repo, a1_digest, a2_digest):
    url = f"http://{host}/v2/{repo}/referrers/{a1_digest}"
    response = reg.do_request(url, "GET", headers={"Accept": OCI_INDEX})
    check_status(f"GET {url}", response, 200)
    index = response.json()
    if index.get("mediaType") != OCI_INDEX:
        fail(f"referrers: mediaType {index.get('mediaType')!r}")
    listed = {d.get("digest"): d for d in index.get("manifests", [])}
    if set(listed) != {a2_digest}:
        fail(f"referrers of A1: {sorted(listed)}, expected [{a2_digest}]")
    entry = listed[a2_digest]
    if entry.get("artifactType") != SIG_CONFIG_TYPE:
        fail(f"referrer A2 artifactType {entry.get('artifactType')!r}, expected {SIG_CONFIG_TYPE}")
    if (entry.get("annotations") or {}).get("org.example.signer") != "ci":
        fail(f"referrer A2 annotations {entry.get('annotations')!r}")


def pull_and_compare(reg, host, repo, workdir, pushed):
    out = os.path.join(workdir, "pulled-" + pushed.tag)
    os.makedirs(out, exist_ok=True)
    files = reg.pull(target=f"{host}/{repo}:{pushed.tag}", outdir=out)
    names = {os.path.basename(f) for f in files}
    if names != set(pushed.files):
        fail(f"pull {pushed.tag}: got files {sorted(names)}, expected {sorted(pushed.files)}")
    for name, data in pushed.files.items():
        got = read(os.path.join(out, name))
        if got != data:
            fail(f"pull {pushed.tag}: {name} differs ({len(got)} vs {len(data)} bytes)")


def main():
    if len(sys.argv) != 4:
        fail("usage: oras_roundtrip.py HOST:PORT REPOSITORY WORKDIR")
    host, repo, workdir = sys.argv[1:]
    reg = oras.provider.Registry(hostname=host, insecure=True)
    # With credentials in the environment, oras-py follows the registry's Bearer
    # challenges to its token service with them.
    if os.environ.get("ORAS_USER"):
        reg.auth.set_basic_auth(os.environ["ORAS_USER"], os.environ["ORAS_PASSWORD"])
    a1, a1_manifest, a1_size = push_a1(reg, host, repo, workdir)
    a2 = push_a2(reg, host, repo, workdir, a1.digest, a1_size)
    fetched = reg.get_manifest(reg.get_container(f"{host}/{repo}:a1"))
    if fetched != a1_manifest:
        fail(f"A1 manifest read back differs: {fetched!r}")
    check_referrers(reg, host, repo, a1.digest, a2.digest)
    pull_and_compare(reg, host, repo, workdir, a1)
    pull_and_compare(reg, host, repo, workdir, a2)
    print(json.dumps({"a1": {"digest": a1.digest}, "a2": {"digest": a2.digest}}))


if __name__ == "__main__":
    main()
