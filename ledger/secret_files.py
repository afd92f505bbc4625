"""Files that hold a secret (key files, the operator's register of personal data, the gateway's
password and keystore, the BLE bond store): the one check that such a file is a regular file
only its owner may read or write, with one wording of the refusal and of its fix.

Each caller raises its own error class (passed in, as ``ledger.fields`` does) and names the file
for what it holds.
"""

from __future__ import annotations

import stat
from pathlib import Path


def check_owner_only(
    path: Path, what: str, error: type[Exception], *, missing_ok: bool = False
) -> bool:
    """Refuse ``path`` unless it is a regular file that group and others may neither read nor
    write (mode 0600 or 0400): raise ``error`` naming ``what``, the path and the ``chmod`` that
    fixes it. True when the file is there; a missing file is False with ``missing_ok``, else
    refused as unreadable."""
    try:
        st = path.stat()
    except OSError as exc:
        if missing_ok and isinstance(exc, FileNotFoundError):
            return False
        raise error(f"{what}: cannot read {path} ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{what}: {path} is not a file")
    if st.st_mode & 0o077:
        raise error(
            f"{what}: {path} is mode {stat.S_IMODE(st.st_mode):04o}; a secret must be readable "
            f"by its owner only (chmod 600 {path})"
        )
    return True
