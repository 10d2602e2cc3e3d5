"""`crucible keys`: add, list and revoke tenants' API keys in the gateway's keys file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gateway.auth import ApiKeys, ApiKeysFile


def keys(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crucible", "keys", *args], capture_output=True, text=True
    )


def test_add_list_and_revoke(tmp_path: Path) -> None:
    file = tmp_path / "api-keys.json"
    added = keys("add", "--tenant", "acme", "--key-id", "ci", "--file", str(file))
    assert added.returncode == 0, added.stderr
    key = added.stdout.strip()
    assert key not in file.read_text()  # only its hash is stored
    principal = ApiKeys(ApiKeysFile.model_validate_json(file.read_text()).keys).authenticate(key)
    assert principal is not None and (principal.tenant, principal.key_id) == ("acme", "ci")
    assert keys("list", "--file", str(file)).stdout.split() == ["ci", "acme"]
    revoked = keys("revoke", "ci", "--file", str(file))
    assert revoked.returncode == 0 and "revoked ci (tenant acme)" in revoked.stdout
    assert ApiKeysFile.model_validate_json(file.read_text()).keys == []


def test_bad_input_gets_a_clear_error_and_changes_nothing(tmp_path: Path) -> None:
    file = tmp_path / "api-keys.json"
    bad = keys("add", "--tenant", "a.b c", "--file", str(file))
    message = " ".join(bad.stderr.replace("│", " ").split())  # as rich wrapped it in a box
    assert bad.returncode == 2 and "letters, digits, '-' and '_'" in message
    assert not file.exists()
    missing = keys("revoke", "nope", "--file", str(file))
    assert missing.returncode == 1 and "no key 'nope'" in missing.stderr
