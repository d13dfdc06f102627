"""`traitlab chat`: talk to the steered model in a terminal while it monitors a trait per token.

Replies stream token by token, each coloured by the live cosine score of the colour trait (red: along the
trait, blue: against it; the scale is the largest |score| seen so far in the chat). The monitored projections
are taken in the same forward passes as the generation (traitlab.monitor.generation). Commands change what
is applied between turns; ``/save`` logs the transcript, each turn's steering and per-token views as one run.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from traitlab.config.generate import ChatConfig
from traitlab.data.texts import TextItem
from traitlab.errors import ConfigError, TraitlabError
from traitlab.io import content_hash
from traitlab.models.identity import model_tags
from traitlab.models.loading import LoadedModel, load_model
from traitlab.monitor.generation import MonitoredGeneration, generate_monitored
from traitlab.monitor.records import build_record
from traitlab.monitor.scoring import decode_tokens
from traitlab.monitor.vectors import TraitVector, vectors_by_layer
from traitlab.monitor.views import write_views
from traitlab.pipelines.common import (
    check_monitored,
    conversation_text,
    model_key,
    monitor_component,
    monitored_vectors,
    set_cap_thresholds,
    steering_setup,
    use_vector,
)
from traitlab.steering_vector import MODES, SteeringSetup, SteeringVector
from traitlab.tracking.runs import job_run
from traitlab.viz.token_view import token_colour

HELP = """commands (between turns):
  /coef X            coefficient X (a number, or best: the steering study's best per layer)
  /vector SPEC [W]   steer with this vector only (trait, run:<id> or file.safetensors; weight W, default 1)
  /add SPEC [W]      stack another vector
  /drop              remove the last stacked vector
  /mode M            add | add_response | ablate | cap
  /on  /off          steering on or off (the monitor keeps watching)
  /monitor TRAIT     colour tokens by this trait (a registered trait)
  /status            what is applied now
  /save [NAME]       log the transcript as an MLflow run
  /reset             forget the conversation so far
  /quit              leave (also Ctrl-D)"""


@dataclass
class Turn:
    user: str
    reply: str
    steering: str  # what was applied ("off" when toggled off)
    generation: MonitoredGeneration = field(repr=False)


@dataclass
class ChatSession:
    """The chat's state and its commands; ``say`` generates a reply, ``command`` handles a /line."""

    cfg: ChatConfig
    lm: LoadedModel
    setup: SteeringSetup
    monitored: list[TraitVector]
    write: Callable[[str, str | None], None]  # (text, rich style or None)
    enabled: bool = True
    colour: int = 0  # index into monitored
    messages: list[dict[str, str]] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)
    _scale: float = 0.0

    # ----------------------------------------------------------------------------------------- replies

    def say(self, text: str) -> str:
        self.messages.append({"role": "user", "content": text})
        prompt = conversation_text(self.lm, self.messages)
        stacked, columns = vectors_by_layer(self.monitored)
        tv = self.monitored[self.colour]
        column = columns[self.colour]
        reply_ids: list[int] = []
        shown = [""]

        def on_token(token_id: int, scores: dict, norms: dict) -> None:
            reply_ids.append(token_id)
            cos = float(scores[tv.layer][column]) / max(float(norms[tv.layer]), 1e-12)
            self._show(reply_ids, shown, cos)

        gen = self.cfg.generation
        steering = (lambda start: self.setup.apply(self.lm, start=start)) if self.enabled else None
        out = generate_monitored(self.lm, [prompt], stacked, component=monitor_component(self.cfg, self.setup),
                                 steering=steering,
                                 max_new_tokens=gen.max_new_tokens, seed=self.cfg.seed, do_sample=gen.do_sample,
                                 temperature=gen.temperature, top_p=gen.top_p,
                                 on_token=on_token if self.cfg.show_scores else None)[0]
        full = self.lm.tokenizer.decode(out.scored.token_ids[out.scored.n_prompt_tokens:], skip_special_tokens=True)
        rest = full[len(shown[0]):] if full.startswith(shown[0]) else ""
        self.write(rest if self.cfg.show_scores else out.text, "dim" if self.cfg.show_scores else None)
        self.write("\n", None)
        self.messages.append({"role": "assistant", "content": out.text})
        self.turns.append(Turn(text, out.text, self.setup.describe() if self.enabled else "off", out))
        return out.text

    def _show(self, reply_ids: list[int], shown: list[str], cos: float) -> None:
        """Print the text the new token completes (held back while a multi-byte character is unfinished)."""
        text = self.lm.tokenizer.decode(reply_ids, skip_special_tokens=True)
        if text.endswith("\ufffd") or not text.startswith(shown[0]):
            return
        piece, shown[0] = text[len(shown[0]):], text
        if math.isfinite(cos):
            self._scale = max(self._scale, abs(cos), 0.02)
        bg, fg = token_colour(cos if math.isfinite(cos) else None, self._scale)
        self.write(piece, None if bg == "transparent" else
                   f"{'#ffffff' if fg == '#fff' else '#111111'} on {bg.replace(' ', '')}")

    # ---------------------------------------------------------------------------------------- commands

    def command(self, line: str) -> bool:
        """Handle one /command; False when the chat should end."""
        name, _, arg = line[1:].strip().partition(" ")
        arg = arg.strip()
        try:
            if name in ("quit", "exit", "q"):
                return False
            handler = getattr(self, f"_cmd_{name}", None)
            if handler is None:
                self.write(f"unknown command /{name}\n{HELP}\n", "yellow")
            else:
                handler(arg)
        except TraitlabError as e:
            self.write(f"{e}\n", "red")
        return True

    def _cmd_help(self, arg: str) -> None:
        self.write(HELP + "\n", None)

    def _cmd_status(self, arg: str) -> None:
        state = self.setup.describe() if self.enabled else f"off (would apply {self.setup.describe()})"
        tv = self.monitored[self.colour]
        self.write(f"steering: {state}\ncolour: {tv.label} (cosine); monitored: "
                   f"{', '.join(t.label for t in self.monitored)}\n", "cyan")

    def _rebuild(self, **changes: Any) -> None:
        s = self.setup
        new = {"vectors": s.vectors, "weights": s.weights, "coefficient": s.coefficient, "mode": s.mode,
               "cap": s.cap, **changes}
        setup = SteeringSetup(**new)
        set_cap_thresholds(self.lm, setup, self.cfg.cap.quantile, **self._tracking())
        self.setup = setup
        self._cmd_status("")

    def _cmd_coef(self, arg: str) -> None:
        if not arg:
            raise ConfigError("coefficient", "usage: /coef 8 (or /coef best)")
        self._rebuild(coefficient=arg)

    def _spec(self, arg: str) -> tuple[SteeringVector, float]:
        spec, _, weight = arg.partition(" ")
        if not spec:
            raise ConfigError("vectors", "usage: /vector starter/optimism [weight]")
        try:
            w = float(weight) if weight.strip() else 1.0
        except ValueError:
            raise ConfigError("weights", f"{weight!r} is not a number") from None
        return use_vector(self.cfg, spec), w

    def _cmd_vector(self, arg: str) -> None:
        v, w = self._spec(arg)
        self._rebuild(vectors=[v], weights=[w])

    def _cmd_add(self, arg: str) -> None:
        v, w = self._spec(arg)
        self._rebuild(vectors=[*self.setup.vectors, v], weights=[*(self.setup.weights or []), w])

    def _cmd_drop(self, arg: str) -> None:
        if len(self.setup.vectors) < 2:
            raise ConfigError("vectors", "only one vector is applied; use /off to stop steering")
        self._rebuild(vectors=self.setup.vectors[:-1], weights=(self.setup.weights or [])[:-1])

    def _cmd_mode(self, arg: str) -> None:
        if arg not in MODES:
            raise ConfigError("mode", f"{arg!r} is not one of {', '.join(MODES)}")
        self._rebuild(mode=arg)

    def _cmd_on(self, arg: str) -> None:
        self.enabled = True
        self._cmd_status("")

    def _cmd_off(self, arg: str) -> None:
        self.enabled = False
        self._cmd_status("")

    def _cmd_monitor(self, arg: str) -> None:
        labels = [tv.trait for tv in self.monitored]
        if arg not in labels:
            cfg = replace(self.cfg, monitor=[*dict.fromkeys(labels), arg])
            self.monitored = monitored_vectors(cfg, self.setup, self.lm)
            labels = [tv.trait for tv in self.monitored]
        self.colour = labels.index(arg)
        self._scale = 0.0
        self._cmd_status("")

    def _cmd_reset(self, arg: str) -> None:
        self.messages.clear()
        self.write("(conversation cleared; the transcript keeps every turn)\n", "cyan")

    def _cmd_save(self, arg: str) -> None:
        run_id = save_transcript(self, name=arg or None)
        self.write(f"MLflow run: {run_id}\n", "green")

    def _tracking(self) -> dict[str, Any]:
        return {"experiment": self.cfg.tracking.experiment, "uri": self.cfg.tracking.uri}


def save_transcript(session: ChatSession, name: str | None = None) -> str:
    """One MLflow run: the chat's config as params, the transcript (JSON + markdown) and per-turn token views."""
    cfg, lm = session.cfg, session.lm
    if not session.turns:
        raise ConfigError("save", "nothing to save yet: say something first")
    transcript = [{"user": t.user, "assistant": t.reply, "steering": t.steering} for t in session.turns]
    key = content_hash("chat-v1", model_key(lm), transcript, time.time())
    traits = sorted({v.trait or v.label for v in session.setup.vectors})
    tags = {"traitlab.stage": "chat", **model_tags(cfg.model), "trait": ",".join(traits)[:5000],
            "steering": session.setup.describe()[:5000], "mode": session.setup.mode,
            "monitor": ",".join(tv.label for tv in session.monitored)[:5000]}
    _, columns = vectors_by_layer(session.monitored)
    with job_run(experiment=cfg.tracking.experiment, job_key=key, run_name=cfg.tracking.run_name or name or "chat",
                 config=asdict(cfg), tags=tags, uri=cfg.tracking.uri) as run:
        records = []
        for i, t in enumerate(session.turns, start=1):
            item = TextItem(f"turn{i:02d}", t.user, None, t.reply)
            rec = build_record(item, decode_tokens(lm.tokenizer, t.generation.scored.token_ids), t.generation.scored,
                               session.monitored, columns, model=lm.name, source="chat", score_mode=cfg.score_mode,
                               centered=False, clean_massive=False)
            rec["steering"] = t.steering
            records.append(rec)
        md = "\n\n".join(f"**you:** {t['user']}\n\n**model** ({t['steering']}): {t['assistant']}" for t in transcript)
        with tempfile.TemporaryDirectory() as tmp:
            write_views(Path(tmp), records, title=f"chat · {lm.name}", max_figures=0)
            run.log_artifacts(tmp)
        run.log_dict({"turns": transcript}, "transcript.json")
        run.log_text(md + "\n", "transcript.md")
        run.log_metric("n_turns", len(transcript))
        run.set_tag("mlflow.note.content", f"Chat of {len(transcript)} turn(s) with {lm.name}; last steering: "
                                           f"{session.setup.describe()}.\n\n" + md[:4000])
        return run.run_id


def run_chat(cfg: ChatConfig, lm: LoadedModel | None = None, read: Callable[[], str] | None = None,
             console: Any = None) -> ChatSession:
    """The interactive loop: read lines until /quit or end of input; each line is a turn or a command."""
    from rich.console import Console

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    console = console or Console(highlight=False, soft_wrap=True)
    setup = steering_setup(cfg)  # bad vectors, coefficients or monitored traits fail before the model loads
    check_monitored(cfg)
    lm = lm or load_model(cfg.model)
    set_cap_thresholds(lm, setup, cfg.cap.quantile, experiment=cfg.tracking.experiment, uri=cfg.tracking.uri)
    monitored = monitored_vectors(cfg, setup, lm)

    def write(text: str, style: str | None) -> None:
        console.print(text, style=style, end="", markup=False, highlight=False)
        console.file.flush()

    session = ChatSession(cfg, lm, setup, monitored, write)
    read = read or (lambda: console.input("\n[bold]you>[/bold] "))
    write(f"traitlab chat · {lm.name} · steering: {setup.describe()} · /help for commands\n", "cyan")
    while True:
        try:
            line = read().strip()
        except (EOFError, KeyboardInterrupt):
            write("\n", None)
            break
        if not line:
            continue
        if line.startswith("/"):
            if not session.command(line):
                break
            continue
        write("model> ", "bold")
        session.say(line)
    return session
