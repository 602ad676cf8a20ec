"""The report as one self-contained HTML page: inline CSS, figures as data URIs, no script.

Every string from the run (samples, prompts, task ids, reasons, folder names, config values) is
untrusted: ``el`` escapes every child and attribute value that is not ``Html``, the markup this
module builds itself, so nothing the run wrote can open a tag. The page also carries a
Content-Security-Policy that allows no script and no load from anywhere but data: images.
"""

from __future__ import annotations

import base64
import html
import re
from datetime import datetime, timezone

from codegpt.problems import task_number
from codegpt.report.plots import pass_at_k_file
from codegpt.report.run import Eval, Run, TrainRun, funnel_rows, number
from codegpt.stages import BY_FOLDER, MODELS, STAGES, Stage, stage

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
GALLERY_PER_VERDICT = 3       # samples per model shown of each verdict (passed, failed)
PROMPT_CHARS, COMPLETION_CHARS = 2500, 3000
PASS_COLORS = ((0.0, (255, 255, 229)), (0.25, (217, 240, 163)), (0.5, (120, 198, 121)),
               (0.75, (35, 132, 67)), (1.0, (0, 69, 41)))  # YlGn
CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328;
       margin: 0 auto; max-width: 1240px; padding: 16px 24px 48px; background: #fff; }
h1 { font-size: 24px; margin: 8px 0 2px; }
h2 { font-size: 19px; margin: 28px 0 8px; padding-top: 8px; border-top: 1px solid #d0d7de; }
h3 { font-size: 15px; margin: 18px 0 6px; }
.sub, .note { color: #57606a; }
nav a { margin-right: 12px; }
table { border-collapse: collapse; margin: 6px 0 10px; }
th, td { border: 1px solid #d0d7de; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
td code { word-break: break-all; }
.notrun { color: #8c959f; font-style: italic; }
.warn { color: #9a6700; }
.state-ran { color: #1a7f37; } .state-notrun { color: #8c959f; } .state-bad { color: #cf222e; }
img.fig { max-width: 100%; border: 1px solid #eaeef2; margin: 6px 0; display: block; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(52px, 1fr)); gap: 2px;
        margin: 4px 0 12px; }
.cell { border: 1px solid #d0d7de; padding: 1px 3px; font-size: 11px; line-height: 1.25;
        text-align: center; }
.cell b { display: block; font-size: 12px; }
.cell.none { background: #eaeef2; color: #8c959f; border-style: dashed; }
.legend .cell { display: inline-block; width: 64px; margin-right: 2px; }
.sample { border: 1px solid #d0d7de; border-left-width: 5px; margin: 8px 0; }
.sample.passed { border-left-color: #1a7f37; } .sample.failed { border-left-color: #cf222e; }
.sample .meta { background: #f6f8fa; padding: 3px 8px; font-size: 13px; }
pre { margin: 0; padding: 6px 8px; overflow: auto; max-height: 420px; font-size: 12px;
      white-space: pre-wrap; word-break: break-all; }
pre .prompt { color: #57606a; } pre .completion { background: #fff8c5; }
details pre { background: #f6f8fa; }
"""


class Html(str):
    """Markup this module made: inserted as is. Any other string is escaped."""


def esc(value: object) -> Html:
    return value if isinstance(value, Html) else Html(html.escape(str(value), quote=True))


def _attrs(attrs: dict) -> str:
    return "".join(f' {k.rstrip("_").replace("_", "-")}="{esc(v)}"' for k, v in attrs.items()
                   if v is not None)


def el(tag: str, *children: object, **attrs: object) -> Html:
    """<tag attrs>children</tag>; ``class_=`` for class; None children are left out."""
    return Html(f"<{tag}{_attrs(attrs)}>{''.join(esc(c) for c in children if c is not None)}"
                f"</{tag}>")


def join(*parts: object) -> Html:
    return Html("".join(esc(p) for p in parts if p is not None))


def table(header: list[str] | None, rows: list[list[object]]) -> Html:
    """A table (no header row for None); cells formatted as ``Num`` are right-aligned."""
    def cell(v: object) -> Html:
        return el("td", v, class_="n") if isinstance(v, Num) else el("td", v)
    head = el("thead", el("tr", *(el("th", h) for h in header))) if header else None
    return el("table", head, el("tbody", *(el("tr", *(cell(v) for v in row)) for row in rows)))


class Num(str):
    """A formatted number: right-aligned in tables."""


def fmt(value: object, spec: str = ",.0f", suffix: str = "") -> Num | str:
    x = number(value)
    return "—" if x is None else Num(f"{x:{spec}}{suffix}")


def pct(value: object, digits: int = 2) -> Num | str:
    x = number(value)
    return "—" if x is None else Num(f"{100 * x:.{digits}f}%")


def mb(n_bytes: object) -> Num | str:
    x = number(n_bytes)
    return "—" if x is None else Num(f"{x / 1e6:,.2f}")


def figure(figs: dict[str, bytes], name: str, alt: str) -> Html | None:
    if name not in figs:
        return None
    data = base64.b64encode(figs[name]).decode("ascii")
    return Html(f'<img class="fig" src="data:image/png;base64,{data}" alt="{esc(alt)}" '
                f'title="{esc(name)}">')


# --- stage states ------------------------------------------------------------------------------

def stage_value(run: Run, folder: str) -> object:
    return run.output(BY_FOLDER[folder].name)


def stage_state(run: Run, folder: str) -> tuple[str, str]:
    """("ran" | "not run" | "incomplete" | "unreadable", why)."""
    unfinished = {k: v for k, v in run.incomplete.items() if k.split("/")[0] == folder}
    if unfinished:
        return "incomplete", "; ".join(f"{k}/: {v}" for k, v in unfinished.items())
    bad = {k: v for k, v in run.unreadable.items() if k.split("/")[0] == folder}
    if bad and stage_value(run, folder) is None:
        return "unreadable", "; ".join(f"{k}: {v}" for k, v in bad.items())
    if stage_value(run, folder) is not None:
        return "ran", "; ".join(f"{k}: {v}" for k, v in bad.items())
    if not run.present(folder) and run.skipped(folder) is not None:
        return "skipped", run.skipped(folder)
    if run.present(folder):
        return "incomplete", f"{folder}/ holds no {BY_FOLDER[folder].expect}"
    return "not run", f"no {folder}/ in this run folder"


def not_run(run: Run, folder: str, what: str = "") -> Html:
    """The line a section shows for a stage without output: "not run: why" (or "not run to the
    end", "unreadable")."""
    state, why = stage_state(run, folder)
    text = {"incomplete": "not run to the end"}.get(state, state)
    return el("p", f"{what}{text}: {why}",
              class_="notrun" if state in ("not run", "skipped") else "warn")


# the page's sections: anchor -> (heading, short name for the navigation); then one section
# per benchmark the run has (its folder as the anchor, its title as the heading)
SECTIONS = {"stages": ("Stages", "stages"), "data": ("Data funnel (data/)", "data"),
            "tokenizer": ("Tokenizer and token shards", "tokenizer"),
            "sft-data": ("Codex-S data (sft-data/)", "Codex-S data"),
            "training": ("Training: pretraining and Codex-S fine-tuning", "training"),
            "benchmarks": ("Benchmarks side by side", "benchmarks")}


def section(anchor: str, *body: object) -> Html:
    title = SECTIONS[anchor][0] if anchor in SECTIONS else BY_FOLDER[anchor].title
    return el("section", el("h2", title), *body, id=anchor)


# --- sections ------------------------------------------------------------------------------------

def overview(run: Run, figs: dict[str, bytes]) -> Html:
    rows = []
    shown = run.evaluations()
    for s in STAGES:
        if s.benchmark and s not in shown:
            continue
        state, why = stage_state(run, s.folder)
        cls = {"ran": "state-ran", "not run": "state-notrun", "skipped": "state-notrun"}.get(
            state, "state-bad")
        rows.append([s.title, el("code", f"{s.folder}/"), el("span", state, class_=cls), why])
    body = [table(["stage", "folder", "state", "note"], rows)]
    if run.timings is not None:
        body.append(timings(run.timings))
    elif "timings.json" in run.unreadable:
        body.append(el("p", f"timings.json: {run.unreadable['timings.json']}",
                       class_="warn"))
    return section("stages", *body)


def timings(t: dict) -> Html:
    stages = t.get("stages") if isinstance(t.get("stages"), dict) else {}
    total = sum(number(v.get("seconds")) or 0 for v in stages.values() if isinstance(v, dict))
    rows = []
    for name, v in stages.items():
        v = v if isinstance(v, dict) else {}
        seconds = number(v.get("seconds"))
        rows.append([name, v.get("status", "—"), fmt(seconds, ",.1f"),
                     pct(seconds / total if seconds is not None and total else None, 1)])
    rows.append([el("b", "total"), "", fmt(total, ",.1f"), ""])
    info = [[k, v if isinstance(v, str) else repr(v)] for k, v in t.items() if k != "stages"]
    return join(el("h3", "Stage timings (timings.json)"),
                table(["stage", "status", "seconds", "share"], rows),
                table(None, info) if info else None)


def data_section(run: Run, figs: dict[str, bytes]) -> Html:
    if run.data is None:
        return section("data", not_run(run, "data"))
    s = run.data
    inp = s["inputs"]
    files, size = number(inp.get("files")) or 0, number(inp.get("bytes")) or 0

    def row(stage, reason, v):
        return [stage, reason, fmt(v.get("files")), pct(v.get("files", 0) / files if files
                                                        else None, 1),
                mb(v.get("bytes")), pct(v.get("bytes", 0) / size if size else None, 1)]
    rows = [[el("b", "inputs"), "", fmt(files), pct(1, 1), mb(size), pct(1, 1)]]
    rows += [row(stage, reason, v) for stage, reason, v in funnel_rows(s)]
    rows.append([el("b", "kept"), "", *row("", "", s["kept"])[2:]])
    note = None if s.get("accounted", True) else el(
        "p", "the rejections and kept files do not add up to the inputs", class_="warn")
    return section("data", note,
                   table(["stage", "reason", "files", "of files", "MB", "of bytes"], rows),
                   figure(figs, "funnel.png", "files and MB removed per stage and reason"))


def tokenizer_section(run: Run, figs: dict[str, bytes]) -> Html:
    body: list[object] = []
    t = run.tokenizer
    if t is None:
        body += [el("h3", "tokenizer/"), not_run(run, "tokenizer")]
    else:
        sample = t.get("sample") if isinstance(t.get("sample"), dict) else {}
        special = t.get("special_tokens") if isinstance(t.get("special_tokens"), dict) else {}
        rows = [["vocabulary size", fmt(t.get("vocab_size"))],
                ["special tokens", ", ".join(special) or "—"],
                ["whitespace tokens", fmt(t.get("whitespace_tokens"))],
                ["pre-tokenizer", t.get("pre_tokenizer", "—")],
                ["trained on", f"{fmt(sample.get('mb'), ',.1f')} MB, "
                               f"{fmt(sample.get('documents'))} documents, "
                               f"in {fmt(sample.get('train_seconds'), ',.1f')} s"],
                ["hash", str(t.get("tokenizer_hash", "—"))[:16]]]
        body += [el("h3", "tokenizer/"), table(None, [[k, str(v)] for k, v in rows])]
    m = run.tokens
    if m is None:
        body += [el("h3", "tokens/"), not_run(run, "tokens")]
    else:
        rows = [[split, fmt(info.get("documents")), fmt(info.get("tokens")), mb(info.get("bytes")),
                 fmt(info.get("bytes_per_token"), ".3f"), info.get("bytes_source", "—")]
                for split, info in m["splits"].items()]
        for s in run.evaluations():  # each benchmark's canonical solutions, where measured
            canon = next((e.results for e in run.of(s.folder)
                          if number(e.results.get("canonical_tokens"))), None)
            if canon:
                rows.append([f"{s.title} canonical solutions", fmt(len(canon.get(
                    "canonical_per_problem") or {})), fmt(canon["canonical_tokens"]),
                    mb(canon.get("canonical_bytes")),
                    fmt((number(canon.get("canonical_bytes")) or 0) / canon["canonical_tokens"],
                        ".3f"), f"{s.folder} results.json"])
        notes = [el("p", m["bytes_note"], class_="warn") if m.get("bytes_note") else None]
        if t is not None and t.get("tokenizer_hash") not in (None, m.get("tokenizer_hash")):
            notes.append(el("p", "the shards were made with another tokenizer than tokenizer/ "
                                 "holds", class_="warn"))
        body += [el("h3", "tokens/"),
                 el("p", f"vocabulary {fmt(m.get('vocab_size'))}, {m.get('dtype', '?')} ids; "
                         "bytes per token counts UTF-8 bytes of text per token, the documents' "
                         "separators not counted", class_="note"),
                 table(["split", "documents", "tokens", "MB of text", "bytes/token", "bytes"],
                       rows), *notes]
    return section("tokenizer", *body)


def run_row(title: str, r: TrainRun) -> list[object]:
    last = r.rows[-1] if r.rows else {}
    status = r.status.get("status", "—") if r.status else "—"
    best = min((v[2] for v in r.val), default=None)
    return [title, status, fmt(last.get("step")), fmt(last.get("tokens")), fmt(last.get("loss"),
            ".4f"), fmt(r.last_val, ".4f"), fmt(best, ".4f"), fmt(r.median("tokens_per_s")),
            fmt(r.median("step_time_s"), ".3f"), pct(r.median("mfu"), 1)]


def training_section(run: Run, figs: dict[str, bytes]) -> Html:
    runs = [(s.title, s.folder, run.output(s.name)) for s in map(stage, MODELS.values())]
    rows = [run_row(f"{title} ({folder}/)", r) for title, folder, r in runs if r is not None]
    body: list[object] = [not_run(run, folder, f"{title} ({folder}/): ")
                          for title, folder, r in runs if r is None]
    body += [el("p", f"{title} ({folder}/) did not finish: {run.incomplete[folder]}",
                class_="warn") for title, folder, r in runs
             if r is not None and folder in run.incomplete]
    if rows:
        body.insert(0, table(["run", "status", "steps", "tokens", "last loss", "last val loss",
                              "best val loss", "median tokens/s", "median step s",
                              "median MFU"], rows))
    body += [figure(figs, "training.png", "train and val loss and lr against tokens"),
             figure(figs, "throughput.png", "tokens/s and MFU against tokens")]
    for title, folder, r in runs:
        if r is not None and r.config_text:
            body.append(el("details", el("summary", f"{folder}/config.yaml"),
                           el("pre", r.config_text)))
    return section("training", *body)


def sft_data_section(run: Run, figs: dict[str, bytes]) -> Html:
    s = run.sft_data
    if s is None:
        return section("sft-data", not_run(run, "sft-data"))
    cand = number(s["candidates"]) or 0
    docs = s.get("documents") if isinstance(s.get("documents"), dict) else {}
    sources = s.get("candidates_by_source") if isinstance(s.get("candidates_by_source"),
                                                          dict) else {}
    rows = [[el("b", "candidates"), fmt(cand), pct(1, 1),
             ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}"
                       for k, v in sources.items())]]
    rows += [[f"- {reason}", fmt(n), pct(number(n) / cand if cand and number(n) else None, 1), ""]
             for reason, n in s["rejected"].items()]
    rows.append([el("b", "kept"), fmt(s["kept"]), pct(number(s["kept"]) / cand if cand else
                                                      None, 1),
                 f"{fmt(s.get('tested'))} tested, {fmt(s.get('untested'))} untested"])
    splits = s.get("splits") if isinstance(s.get("splits"), dict) else {}
    split_rows = [[k, fmt(v.get("pairs")), fmt(v.get("tested")), fmt(v.get("repositories")),
                   mb(v.get("bytes"))] for k, v in splits.items() if isinstance(v, dict)]
    return section(
        "sft-data",
        el("p", f"{fmt(docs.get('read'))} documents read, {fmt(docs.get('unparsable'))} "
                f"unparsable; sandbox: {s.get('sandbox', '—')}", class_="note"),
        table(["", "functions", "of candidates", ""], rows),
        table(["split", "pairs", "tested", "repositories", "MB"], split_rows)
        if split_rows else None,
        figure(figs, "sft_funnel.png", "Codex-S candidates rejected per reason"))


def benchmark_section(s: Stage, run: Run, figs: dict[str, bytes]) -> Html:
    """One benchmark: its evaluations' figures, per-problem grids and samples."""
    folder = s.folder
    evals = run.of(folder)
    bad = [el("p", f"{k}: {v}", class_="warn") for k, v in run.unreadable.items()
           if k.startswith(f"{folder}/")]
    bad += [el("p", f"{k}/ is incomplete: {v}", class_="warn")
            for k, v in run.incomplete.items() if k.startswith(f"{folder}/")]
    if not evals:
        return section(folder, not_run(run, folder), *bad)
    return section(folder, *bad, headline(run, evals),
                   figure(figs, pass_at_k_file(folder), f"{s.title} pass@k against k"),
                   el("h3", "Per problem"), problem_grids(run, evals),
                   el("h3", "Samples"), gallery(run, evals))


def benchmarks_section(run: Run, figs: dict[str, bytes]) -> Html:
    """Every benchmark's headline figures in one table, model by model."""
    shown = run.evaluations()
    skipped = [not_run(run, s.folder, f"{s.title} ({s.folder}/): ") for s in shown
               if not run.of(s.folder) and run.skipped(s.folder) is not None]
    if not run.evals:
        return section("benchmarks", el("p", "no evaluation in this run folder",
                                        class_="notrun"), *skipped)
    models = list(dict.fromkeys(e.model for e in run.evals))
    evals = sorted(run.evals, key=lambda e: models.index(e.model))  # stable: benchmark order
    return section("benchmarks", headline(run, evals, benchmarks=True), *skipped)


def per_model(run: Run, e: Eval, key: str) -> float | None:
    """A likelihood figure (``key`` of results.json) of ``e``'s model on its benchmark: ``e``'s
    own, or that of another of the model's evaluations there (the likelihood does not depend on
    the sampling settings, and the reference run measures it once per model): the canonical
    solutions' bits/byte, or an infilling set's canonical middles' with the suffix or without
    (``middle_fim_bits_per_byte``, ``middle_l2r_bits_per_byte``)."""
    return next((o.results[key] for o in [e, *run.of(e.benchmark)]
                 if o.model == e.model and o.results.get(key) is not None), None)


def headline(run: Run, evals: list[Eval], benchmarks: bool = False) -> Html:
    """One row per evaluation: pass@k, syntax rate and canonical bits/byte (``benchmarks``:
    of several benchmarks, each row naming its own), and for a plus set the pass rate of the
    same samples under the original benchmark's tests (base pass@k)."""
    plus = any(any(k.startswith("base_pass@") for k in e.results) for e in evals)
    infill = any("middle_l2r_bits_per_byte" in e.results or "exact_match" in e.results
                 for e in evals)

    def bits(e: Eval, what: str) -> str:  # canonical, middle_fim or middle_l2r bits/byte
        return fmt(per_model(run, e, f"{what}_bits_per_byte"), ".4f")

    rows = []
    for e in evals:
        r = e.results
        train = run.output(MODELS[e.model]) if e.model in MODELS else None
        n = (f"{r.get('n_per_problem_min')}" if r.get("n_per_problem_min") ==
             r.get("n_per_problem_max") else
             f"{r.get('n_per_problem_min')}–{r.get('n_per_problem_max')}")
        rows.append([e.model, *([BY_FOLDER[e.benchmark].title] if benchmarks else []),
                     fmt(e.temperature, "g") if e.temperature is not None else e.label,
                     Num(n) if "n_per_problem_min" in r else "—",
                     fmt(train.last_val, ".4f") if train else "—",
                     bits(e, "canonical"), pct(r.get("syntax_rate"), 1),
                     *(pct(r.get(f"pass@{k}")) for k in (1, 10, 100)),
                     *((pct(r.get("base_pass@1")), pct(r.get("base_pass@10"))) if plus else ()),
                     *((pct(r.get("exact_match"), 1), bits(e, "middle_fim"), bits(e, "middle_l2r"))
                       if infill else ()),
                     pct(r.get("reranked_pass@1")),
                     "yes" if r.get("complete", True) else
                     f"no: {r.get('problems')} of {r.get('problems_total')} problems",
                     el("code", e.folder)])
    note = ("val loss is the last of the model's training run (train/ for base, sft/ for "
            "sft; nats/token on its own val split); canonical bits/byte is the likelihood of the "
            "benchmark's reference solutions; pass@k needs at least k samples per problem")
    if plus:
        note += ("; base pass@k: the same samples under the original benchmark's tests (the "
                 "gap to pass@k is what the extra tests caught)")
    if infill:
        note += ("; infilling: exact match is the share of middles equal to the canonical one, "
                 "and the canonical middles' bits/byte is given with the suffix (the FIM "
                 "prompt) and left to right (the prefix alone)")
    return join(
        el("p", note + ".", class_="note"),
        table(["model", *(["benchmark"] if benchmarks else []), "T", "samples/problem",
               "val loss", "canonical bits/byte", "syntax rate", "pass@1", "pass@10",
               "pass@100", *(["base pass@1", "base pass@10"] if plus else []),
               *(["exact match", "middle bits/byte with suffix", "left to right"]
                 if infill else []),
               "reranked pass@1", "complete", "folder"], rows))


def pass_color(rate: float) -> str:
    for (x0, c0), (x1, c1) in zip(PASS_COLORS, PASS_COLORS[1:]):
        if rate <= x1:
            f = (rate - x0) / (x1 - x0)
            return "#" + "".join(f"{round(a + f * (b - a)):02x}" for a, b in zip(c0, c1))
    return "#" + "".join(f"{v:02x}" for v in PASS_COLORS[-1][1])


def cell(text: str, sub: str, title: str, rate: float | None) -> Html:
    if rate is None:
        return el("div", el("b", text), el("small", sub), class_="cell none", title=title)
    style = f"background:{pass_color(rate)};color:{'#fff' if rate > 0.55 else '#1f2328'}"
    return el("div", el("b", text), el("small", sub), class_="cell", style=style, title=title)


# where an evaluation's per-problem likelihood is: the canonical solutions, or an infilling
# set's canonical middles (with the suffix, else left to right)
PER_PROBLEM = ("canonical_per_problem", "middle_fim_per_problem", "middle_l2r_per_problem")


def problem_grids(run: Run, evals: list[Eval]) -> Html:
    """One cell per problem for each model and temperature: colour = share of samples passed,
    number below = the canonical solution's bits/byte (hover a cell for both in words)."""
    legend = el("div", *(cell(f"{r:.0%}", "", "share of samples passed", r)
                         for r in (0, 0.25, 0.5, 0.75, 1)),
                cell("–", "", "no samples", None), class_="legend")
    out = [el("p", "colour: share of a problem's samples that passed; small number: "
                   "bits/byte of its canonical solution under the model; hover for details.",
              class_="note"), legend]
    for e in evals:
        canon = next((o.results[key] for key in PER_PROBLEM for o in [e, *evals]
                      if o.model == e.model and o.results.get(key)), {})
        problems = run.problems.get(e.benchmark, {})
        tasks = sorted(set(problems) | set(e.per_problem) | set(canon), key=task_number)
        cells = []
        for t in tasks:
            n, c = e.per_problem.get(t, (0, 0))
            info = canon.get(t, {})
            bpb = number(info.get("bits_per_byte"))
            label = t.rsplit("/", 1)[-1]
            title = (f"{t}: {c}/{n} samples passed ({c / n:.0%})" if n else f"{t}: no samples")
            title += f" at {e.name}; canonical solution " + (
                f"{bpb:.3f} bits/byte" if bpb is not None else "not measured")
            cells.append(cell(label, f"{bpb:.2f}" if bpb is not None else "", title,
                              c / n if n else None))
        solved = sum(1 for n, c in e.per_problem.values() if c)
        out += [el("p", el("b", e.name), f": {solved} of {len(tasks)} problems solved by at "
                                         "least one sample"),
                el("div", *cells, class_="grid")]
    return join(*out)


def failure_kind(result: object) -> str:
    text = str(result)
    m = re.search(r"\b(\w+(?:Error|Exception|Exit|Interrupt))\b", text)
    if m:
        return m.group(1)
    return "timeout" if "time" in text.lower() else text.split(":")[0]


def spread(items: list, n: int) -> list:
    """n of the items, evenly spaced from the first to the last."""
    if n <= 0:
        return []
    if len(items) <= n:
        return items
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)] if n > 1 \
        else items[:1]


def pick_samples(evals: list[Eval], n: int = GALLERY_PER_VERDICT) -> list[tuple[Eval, dict]]:
    """A few passed samples (spread over the problems) and a few failed ones (one per kind of
    failure first), of one model: deterministic, so two reports of a run show the same."""
    passed: dict[str, tuple[Eval, dict]] = {}
    failed: dict[str, list[tuple[Eval, dict]]] = {}
    for e in evals:
        for s in e.samples or []:
            if s.get("passed") is True:
                passed.setdefault(s["task_id"], (e, s))
            else:
                failed.setdefault(failure_kind(s.get("result")), []).append((e, s))
    good = spread([passed[t] for t in sorted(passed, key=task_number)], n)
    bad = [group[0] for group in failed.values()][:n]
    shown = {s["task_id"] for _, s in bad}
    rest = [x for group in failed.values() for x in group[1:]]
    rest = [x for x in rest if x[1]["task_id"] not in shown] or rest
    return good + bad + spread(rest, n - len(bad))


def sample_card(run: Run, e: Eval, s: dict) -> Html:
    ok = s.get("passed") is True
    verdict = "passed" if ok else str(s.get("result", "no verdict"))
    problem = run.problems.get(e.benchmark, {}).get(s["task_id"], {})
    prompt, suffix = str(problem.get("prompt", "")), str(problem.get("suffix", ""))
    if len(prompt) > PROMPT_CHARS:
        prompt = "…" + prompt[-PROMPT_CHARS:]
    completion = s["completion"]
    more = len(completion) - COMPLETION_CHARS
    if more > 0:
        completion = completion[:COMPLETION_CHARS] + f"\n… ({more:,} more characters)"
    logp = number(s.get("mean_logp"))
    meta = el("div", el("b", s["task_id"]), f" · {e.name} · ",
              el("span", verdict, class_="verdict"),
              f" · mean logp {logp:.3f}" if logp is not None else None, class_="meta")
    if len(suffix) > PROMPT_CHARS:
        suffix = suffix[:PROMPT_CHARS] + "…"
    return el("div", meta, el("pre", el("span", prompt, class_="prompt"),
                              el("span", completion, class_="completion"),
                              el("span", suffix, class_="prompt") if suffix else None),
              class_=f"sample {'passed' if ok else 'failed'}")


def gallery(run: Run, evals: list[Eval]) -> Html:
    models = list(dict.fromkeys(e.model for e in evals))
    out = [el("p", f"up to {GALLERY_PER_VERDICT} passed and {GALLERY_PER_VERDICT} failed samples "
                   "per model; grey: the prompt, yellow: the model's completion.",
              class_="note")]
    for model in models:
        of_model = [e for e in evals if e.model == model]
        picks = pick_samples(of_model)
        out.append(el("h3", f"model {model}"))
        if not any(e.samples for e in of_model):
            out.append(el("p", "no samples.jsonl", class_="notrun"))
        elif not any(s.get("passed") is True for _, s in picks):
            out.append(el("p", "no sample passed", class_="note"))
        out += [sample_card(run, e, s) for e, s in picks]
    return join(*out)


def render(run: Run, figs: dict[str, bytes]) -> str:
    name = run.dir.resolve().name
    present = sum(run.present(s.folder) for s in STAGES)
    benchmarks = run.evaluations()
    nav = el("nav", *(el("a", short, href=f"#{a}") for a, (_, short) in SECTIONS.items()),
             *(el("a", s.title, href=f"#{s.folder}") for s in benchmarks))
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = join(el("h1", f"codegpt report: {name}"),
                el("p", f"run folder {name}/ · {present} of {len(STAGES)} stages present · "
                        f"generated {when}", class_="sub"),
                nav, *(make(run, figs) for make in (
                    overview, data_section, tokenizer_section, sft_data_section,
                    training_section, benchmarks_section)),
                *(benchmark_section(s, run, figs) for s in benchmarks))
    head = join(Html('<meta charset="utf-8">'),
                Html(f'<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">'),
                Html('<meta name="viewport" content="width=device-width, initial-scale=1">'),
                el("title", f"codegpt report: {name}"), el("style", Html(CSS)))
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>{head}</head>\n<body>\n{body}\n</body>\n'
            '</html>\n')

