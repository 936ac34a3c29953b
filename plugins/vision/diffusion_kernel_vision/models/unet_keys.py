"""Legacy weight names: checkpoints saved before the attention layers were unified name the
pixel self-attention projections ``query``, ``key``, ``value`` and ``proj_attn``; today's format
(and this library) names them ``to_q``, ``to_k``, ``to_v`` and ``to_out.0``."""

from __future__ import annotations

import re
from typing import Any

_LEGACY = re.compile(r"(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)")
_CURRENT = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def rename_legacy_attention_keys(sources: dict[str, Any]) -> dict[str, Any]:
    """The same mapping with legacy attention key names replaced by the current ones."""
    renamed = {}
    for key, source in sources.items():
        match = _LEGACY.fullmatch(key)
        if match:
            prefix, name, kind = match.groups()
            key = f"{prefix}.{_CURRENT[name]}.{kind}"
        renamed[key] = source
    return renamed
