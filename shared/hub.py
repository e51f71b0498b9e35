"""Model folders by local path or by Hugging Face Hub repo id ("org/name"), through `huggingface_hub`'s
`snapshot_download`. It honours the usual environment: `HF_HUB_CACHE` / `HF_HOME` for the cache and
`HF_HUB_OFFLINE=1` to use only what the cache already holds."""

from __future__ import annotations

import re
from pathlib import Path

from musetok.shared.errors import UserError

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_folder(name_or_path: str | Path) -> Path:
    """A local folder as it is; otherwise a Hub repo id, downloaded (or found in the cache) as a folder."""
    p = Path(name_or_path)
    if p.exists() or not REPO_ID.match(str(name_or_path)):
        return p
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(str(name_or_path)))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as e:
        raise UserError(f"{name_or_path}: not a local folder, and not a Hub repo that can be reached or is in the "
                        f"cache ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
