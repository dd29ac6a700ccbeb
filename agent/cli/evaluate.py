"""`uici eval` (score the diagnosis on the corpus) and `uici diagnose` (the four-phase diagnosis
from a shell, without a deployment). Registered on the `uici` app by agent/cli/main.py; the
heavy imports happen inside the commands, so `uici --help` stays fast."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markdown import Markdown
from rich.table import Table
from rich.text import Text

from agent.cli.main import (
    EXIT_FAILED,
    ConfigDirOption,
    JsonOption,
    _fail,
    _load,
    _print_json,
    _store,
    app,
    incidents_app,
    stderr,
    stdout,
)

if TYPE_CHECKING:
    from agent.evaluation.harness import EvalReport


def _mark(ok: bool) -> Text:
    return Text("yes", style="green") if ok else Text("NO", style="bold red")


def render_table(report: EvalReport) -> Table:
    table = Table(
        title=f"uici eval --{report.mode}: {len(report.results)} scenarios,"
        f" planner {report.planner}",
        title_justify="left",
    )
    for column in (
        "scenario",
        "class",
        "env",
        "status",
        "cause",
        "fact",
        "safe",
        "rule",
        "planner",
    ):
        table.add_column(column, no_wrap=column in ("status", "cause", "fact", "safe"))
    table.add_column("s", justify="right")
    table.add_column("tokens", justify="right")
    for r in report.results:
        scored = r.status == "scored"
        table.add_row(
            r.name,
            r.failure_class,
            r.environment,
            r.status if not scored else "",
            _mark(r.cause_found) if scored else "",
            _mark(r.facts_named) if scored else "",
            _mark(r.safe) if scored else "",
            r.rule or ("-" if scored else ""),
            r.planner,
            f"{r.duration_seconds:.2f}",
            str(r.prompt_tokens + r.completion_tokens) if r.prompt_tokens else "",
        )
    return table


def render_markdown(report: EvalReport) -> str:
    """The eval report as Markdown: totals, per class, per rule, per scenario, the misses."""
    total = len(report.results)
    lines = [
        f"# uici eval --{report.mode} ({report.planner} planner)",
        "",
        f"{total} scenarios in {report.duration_seconds:.1f} s, {report.started_at}.",
        "",
        "| score | value | threshold |",
        "|---|---|---|",
    ]
    for what in ("cause", "facts", "safety"):
        lines.append(f"| {what} | {report.score(what):.1%} | {report.thresholds[what]:.0%} |")
    lines += ["", "## Per failure class", "", "| class | scenarios | cause | facts | safe |"]
    lines.append("|---|---|---|---|---|")
    for c in report.by_class():
        lines.append(f"| {c.failure_class} | {c.scenarios} | {c.cause} | {c.facts} | {c.safe} |")
    lines += ["", "## Rules and the scenarios they decided", ""]
    for rule, names in report.by_rule().items():
        lines.append(f"- **{rule}**: {', '.join(names)}")
    lines += [
        "",
        "## Scenarios",
        "",
        "| scenario | class | env | cause | facts | safe | root cause |",
    ]
    lines.append("|---|---|---|---|---|---|---|")
    for r in report.results:
        if r.status != "scored":
            lines.append(
                f"| {r.name} | {r.failure_class} | {r.environment} | {r.status} | | | {r.detail} |"
            )
            continue
        yes = {True: "yes", False: "**no**"}
        cause = r.root_cause.replace("|", "\\|")
        lines.append(
            f"| {r.name} | {r.failure_class} | {r.environment} | {yes[r.cause_found]} |"
            f" {yes[r.facts_named]} | {yes[r.safe]} | {cause} |"
        )
    misses = [r for r in report.results if not r.passed]
    if misses:
        lines += ["", "## Misses", ""]
        for r in misses:
            why = [f"status {r.status}: {r.detail}"] if r.status != "scored" else []
            if r.status == "scored" and not r.cause_found:
                why.append(
                    f"diagnosed {r.diagnosed_class or 'nothing'}, expected {r.failure_class}"
                )
            if r.facts_missing:
                why.append(f"facts not named: {', '.join(r.facts_missing)}")
            why += r.unsafe
            if r.replay_missing:
                why.append(f"not in the recording: {', '.join(r.replay_missing)}")
            lines.append(f"- {r.name}: {'; '.join(why)}")
    return "\n".join(lines) + "\n"


@app.command("eval")
def eval_command(
    ctx: typer.Context,
    live: Annotated[
        bool, typer.Option("--live", help="Create each failure for real (local Docker engine).")
    ] = False,
    record: Annotated[
        bool,
        typer.Option("--record", help="Live, and write each scenario's recorded.json for replay."),
    ] = False,
    replay: Annotated[
        bool, typer.Option("--replay", help="Answer from the recordings (the default).")
    ] = False,
    only: Annotated[
        list[str] | None, typer.Option("--only", help="Only this scenario; repeatable.")
    ] = None,
    failure_class: Annotated[
        list[str] | None, typer.Option("--class", help="Only scenarios of this class; repeatable.")
    ] = None,
    environment: Annotated[
        list[str] | None,
        typer.Option("--environment", help="Only docker, kubernetes or oci scenarios; repeatable."),
    ] = None,
    llm: Annotated[
        bool, typer.Option("--llm", help="Plan with the configured LLM (platform.yml llm).")
    ] = False,
    llm_record: Annotated[
        bool,
        typer.Option("--llm-record", help="With --llm: keep the replies in each llm.json."),
    ] = False,
    llm_replay: Annotated[
        bool,
        typer.Option(
            "--llm-replay", help="With --llm: answer from each llm.json, with no provider."
        ),
    ] = False,
    corpus: Annotated[
        Path | None,
        typer.Option("--corpus", help="The corpus directory (default: the shipped one)."),
    ] = None,
    markdown: Annotated[
        Path | None, typer.Option("--markdown", help="Also write the report as Markdown here.")
    ] = None,
    list_only: Annotated[
        bool, typer.Option("--list", help="List the scenarios; run nothing.")
    ] = False,
    as_json: JsonOption = False,
    _config_dir: ConfigDirOption = None,
) -> None:
    """Score the diagnosis on the scenario corpus: cause found, specific fact named, safe.

    Exits 1 when a score is below agents.yml evaluation.thresholds, 2 on a broken scenario."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from agent.evaluation.harness import Evaluation, Mode
    from agent.evaluation.scenarios import CORPUS_DIR, load_corpus
    from infrastructure.configuration.problems import ConfigError

    if sum((live, record, replay)) > 1:
        _fail("choose one of --replay, --live, --record")
    if (llm_record or llm_replay) and not llm:
        _fail("--llm-record and --llm-replay go with --llm")
    if llm_record and llm_replay:
        _fail("choose one of --llm-record, --llm-replay")
    mode: Mode = "record" if record else "live" if live else "replay"
    config = _load(ctx)
    directory = corpus or CORPUS_DIR
    try:
        scenarios = load_corpus(directory, only=only, classes=failure_class)
    except ConfigError as exc:
        _fail(str(exc))
    if environment:
        scenarios = [s for s in scenarios if s.environment in environment]
    if list_only:
        for s in scenarios:
            stdout.print(Text(f"{s.name}  [{s.failure_class}, {s.environment}]  {s.description}"))
        return
    if not scenarios:
        _fail("no scenario matches the selection")
    evaluation = Evaluation(
        config,
        mode,
        planner="llm" if llm else "runbook",
        corpus=directory,
        llm_exchanges="record" if llm_record else "replay" if llm_replay else "live",
    )
    try:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            console=stderr,
            transient=True,
            disable=as_json or not stderr.is_terminal,
        ) as progress:
            task = progress.add_task(f"eval --{mode}", total=len(scenarios))

            def advance(result: Any) -> None:
                progress.update(task, advance=1, description=f"eval --{mode}: {result.name}")

            report = evaluation.run_all(scenarios, advance)
    finally:
        evaluation.close()
    if markdown is not None:
        markdown.write_text(render_markdown(report), encoding="utf-8")
    if as_json:
        _print_json(
            {
                **report.model_dump(mode="json"),
                "scores": {w: report.score(w) for w in ("cause", "facts", "safety")},
                "by_class": [c.model_dump() for c in report.by_class()],
                "by_rule": report.by_rule(),
            }
        )
    else:
        stdout.print(render_table(report))
        stdout.print(
            Text(
                "cause {:.1%}  facts {:.1%}  safety {:.1%}  ({} scenarios, {:.1f} s)".format(
                    report.score("cause"),
                    report.score("facts"),
                    report.score("safety"),
                    len(report.results),
                    report.duration_seconds,
                ),
                style="bold",
            )
        )
        for r in report.results:
            if not r.passed:
                missing = ", ".join(r.facts_missing)
                stdout.print(
                    Text(
                        f"  miss {r.name}: {r.status} {r.detail} diagnosed {r.diagnosed_class}:"
                        f" {r.root_cause} {'; '.join(r.unsafe)}"
                        + (f" missing facts: {missing}" if missing else ""),
                        style="red",
                    )
                )
    below = report.below_thresholds()
    if below:
        stderr.print(Text(f"below the thresholds: {', '.join(below)}", style="bold red"))
        raise typer.Exit(EXIT_FAILED)


@app.command("diagnose")
def diagnose_command(
    ctx: typer.Context,
    alert: Annotated[
        Path | None,
        typer.Option("--alert", help="An Alertmanager webhook body or one alert, as JSON."),
    ] = None,
    service: Annotated[
        str | None, typer.Option("--service", help="The service to diagnose.")
    ] = None,
    env: Annotated[str | None, typer.Option("--env", "-e", help="Environment.")] = None,
    dependency: Annotated[
        list[str] | None, typer.Option("--dependency", "-d", help="A declared dependency.")
    ] = None,
    allow_writes: Annotated[
        bool,
        typer.Option(
            "--allow-writes",
            help="Send the writes the policy allows without a person (e.g. a runbook's bound"
            " restart). Without it the diagnosis only reads.",
        ),
    ] = False,
    as_json: JsonOption = False,
    _config_dir: ConfigDirOption = None,
) -> None:
    """Run the four-phase diagnosis of one service from a shell and print its report.

    The same planner, policy and execution gate as a flow run, in this process, without
    Prefect; the incident is stored like any other (`uici incidents show`)."""
    from agent.incidents.phases import investigate
    from agent.incidents.report import render_markdown as report_markdown
    from agent.incidents.storage import IncidentStore

    config = _load(ctx)
    if (alert is None) == (service is None):
        _fail("give --alert FILE or --service NAME")
    if alert is not None:
        try:
            body = json.loads(alert.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            _fail(f"bad input: {alert}: {exc}")
        if not isinstance(body, dict):
            _fail(f"bad input: {alert}: expected an Alertmanager webhook body or one alert")
        if isinstance(body.get("alerts"), list):
            if not body["alerts"]:
                _fail(f"bad input: {alert}: the webhook body has no alerts")
            body = body["alerts"][0]
    else:
        body = {"status": "firing", "labels": {"alertname": "manual", "service": service}}
    labels = body.setdefault("labels", {})
    if not isinstance(labels, dict):
        _fail("bad input: the alert's labels are not a mapping")
    if env:
        if env not in config.environments.environments:
            _fail(
                f"unknown environment {env!r}; configured: "
                + ", ".join(config.environments.environments)
            )
        labels["uici_env"] = env
    if dependency:
        labels["uici_dependencies"] = ",".join(dependency)
    from agent.incidents.context import LabelConventions, context_from_alert

    try:  # the alert must name a service and a configured environment before anything runs
        context = context_from_alert(body, LabelConventions.from_config(config))
    except ValueError as exc:
        _fail(f"bad input: {exc}")
    if context.environment not in config.environments.environments:
        _fail(f"bad input: the alert maps to unknown environment {context.environment!r}")
    store = IncidentStore.from_config(config)
    incident = f"inc-{uuid.uuid4().hex[:10]}"
    try:
        report, _ = asyncio.run(investigate(config, store, body, incident, writes=allow_writes))
    except Exception as exc:  # the incident ended `failed` with the error in its report
        stderr.print(
            Text(
                f"the diagnosis failed: {type(exc).__name__}: {exc}; incident {incident} is"
                f" stored as failed (`uici incidents show {incident}`)",
                style="red",
            )
        )
        raise typer.Exit(EXIT_FAILED) from None
    if as_json:
        _print_json(report.model_dump(mode="json"))
        return
    # Wrapped to the terminal, not cut (the shared console soft-wraps plain text).
    stdout.print(Markdown(report_markdown(report)), soft_wrap=False)
    if report.diagnosis is None:  # the investigation failed; its report says why
        raise typer.Exit(EXIT_FAILED)


@incidents_app.command("similar")
def incidents_similar(
    ctx: typer.Context,
    incident_id: Annotated[str, typer.Argument(help="The incident id.")],
    as_json: JsonOption = False,
    _config_dir: ConfigDirOption = None,
) -> None:
    """Past incidents of the same service and failure class (incident memory): when, what was
    done, whether it recovered, and after how long it came back."""
    from agent.incidents.memory import IncidentMemory
    from agent.incidents.models import Diagnosis, IncidentContext
    from agent.incidents.report import IncidentReport

    config = _load(ctx)
    store = _store(ctx)
    record = store.get(incident_id)
    if record is None:
        _fail(f"no incident {incident_id!r}; `uici incidents list` shows them")
    if record.report is None or not record.report.get("diagnosis"):
        _fail(f"incident {incident_id} has no diagnosis yet")
    report = IncidentReport.model_validate(record.report)
    diagnosis = Diagnosis.model_validate(report.diagnosis)
    context = IncidentContext.model_validate(
        {
            "incident_id": incident_id,
            "alert": {"labels": {}},
            "environment": report.environment,
            "service": report.service,
        }
    )
    similar = IncidentMemory(store, config.agents.incident_memory).similar(context, diagnosis)
    if as_json:
        _print_json([s.model_dump(mode="json") for s in similar])
        return
    if not similar:
        stdout.print(
            Text(f"no earlier {diagnosis.category} incident of {report.service} is remembered")
        )
        return
    table = Table(
        title=f"{diagnosis.category} on {report.service} ({report.environment})",
        title_justify="left",
    )
    for column in ("incident", "when", "root cause", "done", "recovered", "came back after"):
        table.add_column(column)
    for s in similar:
        table.add_row(
            s.incident_id + (" *" if s.same_signature else ""),
            s.when,
            s.root_cause,
            ", ".join(s.remediations) or "-",
            {True: "yes", False: "no", None: "-"}[s.recovered],
            f"{s.came_back_after_seconds / 3600:.1f} h",
        )
    stdout.print(table)
    stdout.print(Text("* the same signature (same facts and telling lines)", style="dim"))
