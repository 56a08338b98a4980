"""A corpus of malformed and hostile uploads. Every one must be refused with a message naming the
rule it breaks, leaving nothing in the object store, the database or the staging area, and no
pickle may ever be unpickled (its payload would create a marker file)."""

from __future__ import annotations

import builtins
import io
import json
import pickle
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load, save
from sqlalchemy import func, select

from loraplex.adapter_format.peft import AdapterFormatError
from loraplex.adapters.errors import QuotaExceededError
from loraplex.adapters.lifecycle import upload_adapter_version
from loraplex.adapters.models import Adapter, AdapterVersion, ApiKey
from loraplex.adapters.staging import UploadedFile
from loraplex.adapters.tenants import create_tenant
from tests.adapters.archives import tar_files, tar_gz, zip_files
from tests.adapters.support import AdapterFiles, config_with, raw_safetensors

PREFIX = "base_model.model.model.layers"


class CreatesMarker:
    """Unpickling this object opens (creates) the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


@dataclass
class Corpus:
    adapter: AdapterFiles
    marker: Path

    def pickle_payload(self) -> bytes:
        return pickle.dumps({"weights": CreatesMarker(self.marker)})

    def torch_payload(self) -> bytes:
        buffer = io.BytesIO()
        torch.save({"weights": CreatesMarker(self.marker)}, buffer)
        return buffer.getvalue()

    def pair(self, config: bytes | None = None, weights: bytes | None = None) -> list[UploadedFile]:
        return [
            UploadedFile("adapter_config.json", io.BytesIO(config or self.adapter.config)),
            UploadedFile("adapter_model.safetensors", io.BytesIO(weights or self.adapter.weights)),
        ]

    def with_config(self, **changes) -> list[UploadedFile]:
        return self.pair(config=config_with(self.adapter, **changes))

    def with_tensors(self, edit: Callable[[dict[str, torch.Tensor]], None]) -> list[UploadedFile]:
        tensors = load(self.adapter.weights)
        edit(tensors)
        return self.pair(weights=save(tensors))

    def one_lora_a(self, *, data_end: int, buffer_bytes: int) -> list[UploadedFile]:
        """Weights with one fp32 [4, 32] lora_A whose header claims bytes [0, data_end)."""
        entry = {"dtype": "F32", "shape": [4, 32], "data_offsets": [0, data_end]}
        weights = raw_safetensors({f"{Q0}.lora_A.weight": entry}, bytes(buffer_bytes))
        return self.pair(weights=weights)

    def archive(self, filename: str, data: bytes) -> list[UploadedFile]:
        return [UploadedFile(filename, io.BytesIO(data))]


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Corpus], list[UploadedFile]]
    message: str
    error: type[Exception] = AdapterFormatError
    adapter_name: str = "support-bot"


def _rename_layer(tensors, old: str, new: str) -> None:
    for key in [k for k in tensors if old in k]:
        tensors[key.replace(old, new)] = tensors.pop(key)


Q0 = f"{PREFIX}.0.self_attn.q_proj"
REG, SYM, LNK, CHR = tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE

CASES = [
    # adapter_config.json rules
    Case("config-not-json", lambda c: c.pair(config=b"{not json"), "not valid JSON"),
    Case("config-not-object", lambda c: c.pair(config=b"[1, 2]"), "must be a JSON object"),
    Case("not-lora", lambda c: c.with_config(peft_type="IA3"), "only LORA adapters"),
    Case("dora", lambda c: c.with_config(use_dora=True), "DoRA"),
    Case("bias", lambda c: c.with_config(bias="all"), "bias='all' is not supported"),
    Case(
        "modules-to-save", lambda c: c.with_config(modules_to_save=["lm_head"]), "modules_to_save"
    ),
    Case(
        "rank-too-big", lambda c: c.with_config(r=128), "r=128 exceeds the platform maximum of 64"
    ),
    Case(
        "unsupported-target",
        lambda c: c.with_config(target_modules=["q_proj", "lm_head"]),
        r"\['lm_head'\] not supported",
    ),
    Case("rank-pattern", lambda c: c.with_config(rank_pattern={"q_proj": 8}), "per-module ranks"),
    Case("fan-in-fan-out", lambda c: c.with_config(fan_in_fan_out=True), "fan_in_fan_out"),
    Case("lora-bias", lambda c: c.with_config(lora_bias=True), "LoRA bias"),
    Case("bad-alpha", lambda c: c.with_config(lora_alpha="8"), "lora_alpha"),
    # pickles, under their own names and disguised
    Case(
        "pickle-bin",
        lambda c: [
            UploadedFile("adapter_config.json", io.BytesIO(c.adapter.config)),
            UploadedFile("adapter_model.bin", io.BytesIO(c.pickle_payload())),
        ],
        "pickle-based format.*safetensors",
    ),
    Case(
        "pickle-pt-alone",
        lambda c: c.archive("adapter.pt", c.torch_payload()),
        "pickle-based format.*safetensors",
    ),
    Case(
        "pickle-as-safetensors",
        lambda c: c.pair(weights=c.pickle_payload()),
        "holds a pickle.*safetensors",
    ),
    Case(
        "torch-zip-as-safetensors",
        lambda c: c.pair(weights=c.torch_payload()),
        "holds a pickle.*safetensors",
    ),
    Case(
        "pickle-in-tar",
        lambda c: c.archive(
            "a.tar.gz",
            tar_files(
                {"adapter_config.json": c.adapter.config, "adapter_model.bin": c.pickle_payload()}
            ),
        ),
        "pickle-based format",
    ),
    # safetensors header attacks
    Case(
        "header-claims-10gb",
        lambda c: c.pair(
            weights=raw_safetensors({}, b"\0" * 64, claimed_header_length=10 * 1024**3)
        ),
        "claims 10737418240 bytes, above the limit",
    ),
    Case(
        "offsets-past-end",
        lambda c: c.one_lora_a(data_end=512, buffer_bytes=64),
        r"data_offsets \[0, 512\] fall outside the 64-byte data buffer",
    ),
    Case(
        "size-mismatch",
        lambda c: c.one_lora_a(data_end=256, buffer_bytes=256),
        r"occupies 256 bytes but shape \[4, 32\] of F32 needs 512",
    ),
    Case(
        "float64",
        lambda c: c.with_tensors(lambda t: t.update({k: v.double() for k, v in t.items()})),
        "dtype 'F64'; allowed dtypes are F16, BF16 and F32",
    ),
    Case(
        "not-safetensors",
        lambda c: c.pair(weights=b"hello, this is not a tensor file at all"),
        "adapter_model.safetensors: safetensors header claims",
    ),
    # tensors that do not fit the base model
    Case(
        "wrong-hidden-size",
        lambda c: c.with_tensors(lambda t: t.update({f"{Q0}.lora_A.weight": torch.zeros(4, 48)})),
        r"shape \[4, 48\], expected \[4, 32\] for q_proj of the base model \(hidden_size=32",
    ),
    Case(
        "rank-mismatch",
        lambda c: c.with_config(r=8),
        r"has rank 4 .* says r=8",
    ),
    Case(
        "layer-out-of-range",
        lambda c: c.with_tensors(lambda t: _rename_layer(t, "layers.1.", "layers.7.")),
        "layer 7 but the base model has 2 layers",
    ),
    Case(
        "unexpected-tensor",
        lambda c: c.with_tensors(
            lambda t: t.update({"base_model.model.lm_head.weight": torch.zeros(2)})
        ),
        "unexpected tensor 'base_model.model.lm_head.weight'",
    ),
    Case(
        "missing-lora-b",
        lambda c: c.with_tensors(lambda t: t.pop(f"{Q0}.lora_B.weight")),
        "layer 0 q_proj has lora_A but no lora_B",
    ),
    Case(
        "dora-magnitude",
        lambda c: c.with_tensors(
            lambda t: t.update({f"{Q0}.lora_magnitude_vector.weight": torch.zeros(32)})
        ),
        "DoRA magnitude",
    ),
    Case(
        "module-not-declared",
        lambda c: c.with_config(target_modules=["q_proj"]),
        "does not list",
    ),
    # archives
    Case(
        "zip-slip",
        lambda c: c.archive(
            "a.zip",
            zip_files(
                {
                    "../adapter_config.json": c.adapter.config,
                    "adapter_model.safetensors": c.adapter.weights,
                }
            ),
        ),
        "escapes the archive with '..'",
    ),
    Case(
        "zip-absolute",
        lambda c: c.archive("a.zip", zip_files({"/etc/adapter_config.json": c.adapter.config})),
        "unsafe path",
    ),
    Case(
        "zip-symlink",
        lambda c: c.archive(
            "a.zip",
            zip_files(
                {
                    "adapter_config.json": c.adapter.config,
                    "adapter_model.safetensors": b"/etc/passwd",
                },
                symlinks=("adapter_model.safetensors",),
            ),
        ),
        "is a link",
    ),
    Case(
        "tar-symlink",
        lambda c: c.archive(
            "a.tar.gz",
            tar_gz(
                [
                    ("adapter_config.json", c.adapter.config, REG),
                    ("adapter_model.safetensors", None, SYM),
                ]
            ),
        ),
        "'adapter_model.safetensors' is a link",
    ),
    Case(
        "tar-hardlink",
        lambda c: c.archive("a.tar.gz", tar_gz([("adapter_config.json", None, LNK)])),
        "is a link",
    ),
    Case(
        "tar-device",
        lambda c: c.archive("a.tar.gz", tar_gz([("dev/null", None, CHR)])),
        "is a device",
    ),
    Case(
        "tar-dotdot",
        lambda c: c.archive(
            "a.tar.gz", tar_files({"x/../../adapter_config.json": c.adapter.config})
        ),
        "escapes the archive",
    ),
    Case(
        "archive-without-config",
        lambda c: c.archive(
            "a.tar.gz", tar_files({"adapter_model.safetensors": c.adapter.weights})
        ),
        "archive has no adapter_config.json",
    ),
    Case("corrupt-archive", lambda c: c.archive("a.tar.gz", b"\x1f\x8b garbage"), "unreadable"),
    Case(
        "zip-bomb",
        lambda c: c.archive(
            "a.zip",
            zip_files(
                {
                    "adapter_config.json": c.adapter.config,
                    "adapter_model.safetensors": bytes(20_000_000),
                }
            ),
        ),
        "exceeds the size limit of 10000000 bytes",
        QuotaExceededError,
    ),
    # the upload as a whole
    Case("only-config", lambda c: c.pair()[:1], "as two files"),
    Case(
        "over-tenant-limit",
        lambda c: c.pair(weights=c.adapter.weights + b"\0" * 4096),
        "exceeds the size limit of 4096 bytes",
        QuotaExceededError,
    ),
    Case("name-uppercase", lambda c: c.pair(), "invalid adapter name", ValueError, "Support-Bot"),
    Case("name-traversal", lambda c: c.pair(), "invalid adapter name", ValueError, "../evil"),
    Case("name-too-long", lambda c: c.pair(), "1-64 characters", ValueError, "a" * 65),
    Case("name-empty", lambda c: c.pair(), "1-64 characters", ValueError, ""),
    Case("name-leading-dash", lambda c: c.pair(), "invalid adapter name", ValueError, "-bot"),
]


def test_the_pickle_payload_is_live(peft_adapter, tmp_path):
    """Control: unpickling the payload does create the marker, so its absence below means
    nothing was unpickled."""
    corpus = Corpus(peft_adapter, tmp_path / "control-marker")
    pickle.loads(corpus.pickle_payload())
    assert corpus.marker.exists()


def test_corpus_is_large_enough():
    assert len(CASES) >= 15 and len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_malformed_upload_is_refused(case, peft_adapter, policy, session, store, tmp_path):
    limit = 4096 if case.id == "over-tenant-limit" else None
    tenant = create_tenant(session=session, name="acme", max_upload_bytes=limit)
    corpus = Corpus(peft_adapter, tmp_path / "marker")
    staging = tmp_path / "staging"
    staging.mkdir()
    files = case.build(corpus)

    with pytest.raises(case.error, match=case.message):
        upload_adapter_version(
            session=session,
            store=store,
            tenant_id=tenant.id,
            name=case.adapter_name,
            files=files,
            policy=policy,
            staging_root=staging,
        )

    assert not corpus.marker.exists()
    assert list(store.list()) == []
    for model in (Adapter, AdapterVersion, ApiKey):
        assert session.scalar(select(func.count()).select_from(model)) == 0
    assert list(staging.iterdir()) == []


def test_the_untouched_adapter_passes_the_same_path(peft_adapter, policy, session, store, tmp_path):
    """Control: the corpus fails because of each defect, not because of the harness."""
    tenant = create_tenant(session=session, name="acme")
    corpus = Corpus(peft_adapter, tmp_path / "marker")
    version = upload_adapter_version(
        session=session,
        store=store,
        tenant_id=tenant.id,
        name="support-bot",
        files=corpus.with_tensors(lambda t: None),
        policy=policy,
    )
    assert version.version == 1 and json.loads(peft_adapter.config)["r"] == version.rank
