"""The `uici` command line.

Exit codes: 0 ok, 1 the operation failed, 2 bad input or configuration.
This module imports no Prefect and no cloud SDK at start-up: executors are imported only
when an operation really runs (`uici ops list` must start fast; see bench/cli_startup.py).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

import typer
import yaml
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from agent.cli.health import health
from infrastructure.configuration.loader import CONFIG_FILES, UICIConfig, load_config
from infrastructure.configuration.models import OperationSpec, RiskLevel
from infrastructure.configuration.problems import ConfigError
from infrastructure.registry import CallValidationError, OperationRegistry
from infrastructure.translator import CommandSpec, CommandTranslator, TranslationError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2

app = typer.Typer(
    name="uici",
    help="UICI, the Universal Infrastructure Command Interface: diagnose and operate services "
    "in any environment through validated universal operations.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
config_app = typer.Typer(help="Validate and show the configuration.", no_args_is_help=True)
ops_app = typer.Typer(help="The universal operations.", no_args_is_help=True)
envs_app = typer.Typer(help="The configured environments.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(ops_app, name="ops")
app.add_typer(envs_app, name="envs")
incidents_app = typer.Typer(help="Incidents: list, show, approve or reject.", no_args_is_help=True)
app.add_typer(incidents_app, name="incidents")
writes_app = typer.Typer(
    help="Writes sent through the gate: list them, resolve one whose outcome is unknown.",
    no_args_is_help=True,
)
app.add_typer(writes_app, name="writes")
keys_app = typer.Typer(help="API keys for the agent service.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.command("health")(health)

stdout = Console(highlight=False, soft_wrap=True)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]

GLOBAL_OPTIONS_PANEL = "Global options (also accepted before the command)"


def _config_dir_after_command(ctx: typer.Context, value: Path | None) -> Path | None:
    # Parsed after main_callback, so a value given after the command wins over one given
    # before it or in UICI_CONFIG_DIR, as the last of two repeated options does.
    if value is not None:
        ctx.ensure_object(dict)["config_dir"] = value
        _use_config_dir(value)
    return value


def _use_config_dir(value: Path) -> None:
    # Parts built from a store path alone (event log, audit trail, executors) redact with the
    # process's configuration, UICI_CONFIG_DIR: make it the one the command was given.
    os.environ["UICI_CONFIG_DIR"] = str(value)


# Every command declares this so that `uici config validate --config-dir DIR` works like
# `uici --config-dir DIR config validate`: click parses it as an option of the command, so
# its value is never taken for a command name. The value reaches the command through ctx.obj
# (the callback), like the global option's; the parameter itself is unused.
ConfigDirOption = Annotated[
    Path | None,
    typer.Option(
        "--config-dir",
        callback=_config_dir_after_command,
        help="Directory of the configuration files (default: UICI_CONFIG_DIR, else the shipped "
        "configuration).",
        rich_help_panel=GLOBAL_OPTIONS_PANEL,
    ),
]


@app.callback()
def main_callback(
    ctx: typer.Context,
    config_dir: Annotated[
        Path | None,
        typer.Option(
            "--config-dir",
            envvar="UICI_CONFIG_DIR",
            help="Directory of the configuration files (default: the shipped configuration). "
            "Also accepted after the command.",
        ),
    ] = None,
) -> None:
    ctx.obj = {"config_dir": config_dir}
    if config_dir is not None:
        _use_config_dir(config_dir)


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    stderr.print(Text(message))
    raise typer.Exit(code)


def _load(ctx: typer.Context) -> UICIConfig:
    try:
        return load_config(ctx.obj["config_dir"])
    except ConfigError as exc:
        _fail(str(exc))


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


# How a table column may be laid out: "id" (ids, states, times, short fixed words) is never
# wrapped; "name" (services, environments, operations) stays whole while the terminal has
# room and folds when it has not; "text" (root causes, descriptions) wraps at word boundaries
# into the room left. Long words fold: nothing is cut to "…".
ColumnKind = Literal["id", "name", "text"]
_NAME_MIN_WIDTH = 8
_TEXT_MIN_WIDTH = 12  # narrower, prose reads a word a line: the rows are listed as records


def _fitted_table(
    title: str | None,
    columns: Sequence[tuple[str, ColumnKind]],
    rows: Sequence[Sequence[str | Text]],
) -> Table:
    """A table that fits the terminal's width (COLUMNS when stdout is not a terminal).

    Rich alone shrinks every wrappable column alike, to a few letters each when the table is
    wide, and cuts words to "…". Here ids stay whole, then names while there is room, and the
    text wraps into the rest; on a terminal too narrow even for folded names beside a
    readable text column, the rows are listed one field a line instead."""
    table = Table(title=title, title_justify="left")
    _, right, _, left = table.padding
    room = stdout.width - (len(columns) + 1) - len(columns) * (left + right)  # borders, padding
    natural = [
        max([cell_len(header), *(_cell_width(row[index]) for row in rows)])
        for index, (header, _) in enumerate(columns)
    ]
    widths = _column_widths(room, [kind for _, kind in columns], natural)
    if widths is None:
        return _records(title, columns, rows)
    for (header, kind), width, wanted in zip(columns, widths, natural, strict=True):
        if kind == "text":
            table.add_column(header, overflow="fold")  # Rich wraps it into what is left
        elif width < wanted:
            table.add_column(header, width=width, overflow="fold")
        else:
            table.add_column(header, no_wrap=True)
    for row in rows:
        table.add_row(*map(_plain, row))
    return table


def _column_widths(
    room: int, kinds: Sequence[ColumnKind], natural: Sequence[int]
) -> list[int] | None:
    """The widths of the id and name columns (text columns share what is left), or None when
    the ids whole, the names at _NAME_MIN_WIDTH and the text at _TEXT_MIN_WIDTH do not fit."""
    least = {"name": _NAME_MIN_WIDTH, "text": _TEXT_MIN_WIDTH}
    widths = [
        wanted if kind == "id" else min(wanted, least[kind])
        for wanted, kind in zip(natural, kinds, strict=True)
    ]
    if sum(widths) > room:
        return None
    # Names are made whole before text gets wider than its least (they are what one copies
    # into the next command); when not all can be, each gets a fair share.
    names = [index for index, kind in enumerate(kinds) if kind == "name"]
    spare = room - sum(widths) + sum(widths[i] for i in names)
    shares = _fair_shares(spare, [natural[i] for i in names])
    for index, width in zip(names, shares, strict=True):
        widths[index] = width
    return widths


def _fair_shares(room: int, wants: list[int]) -> list[int]:
    """Split `room` among columns wanting `wants`: none gets more than it wants, none less
    than _NAME_MIN_WIDTH (unless it wants less), what a narrow one leaves goes to the others."""
    shares = [0] * len(wants)
    order = sorted(range(len(wants)), key=wants.__getitem__)
    for position, index in enumerate(order):
        fair = room // (len(order) - position)
        shares[index] = min(wants[index], max(_NAME_MIN_WIDTH, fair))
        room -= shares[index]
    return shares


def _records(
    title: str | None,
    columns: Sequence[tuple[str, ColumnKind]],
    rows: Sequence[Sequence[str | Text]],
) -> Table:
    """The rows one under another, a field a line, for a terminal too narrow for the table."""
    table = Table(
        title=title, title_justify="left", show_header=False, box=None, padding=(0, 2, 0, 0)
    )
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for number, row in enumerate(rows):
        if number:
            table.add_row()  # a blank line between two records
        for (header, _), cell in zip(columns, row, strict=True):
            table.add_row(header, _plain(cell))
    return table


def _plain(cell: str | Text) -> Text:
    # A str cell would be read as console markup: "[x]" in a root cause or a log vanishes and
    # "[/x]" raises. What the cells show comes from alerts, logs and LLMs; it is shown as is.
    return Text(cell) if isinstance(cell, str) else cell


def _cell_width(cell: str | Text) -> int:
    plain = cell.plain if isinstance(cell, Text) else cell
    return max((cell_len(line) for line in plain.splitlines()), default=0)


# --- config -----------------------------------------------------------------------------


@config_app.command("validate")
def config_validate(ctx: typer.Context, _config_dir: ConfigDirOption = None) -> None:
    """Check every configuration file and the references between them."""
    config = _load(ctx)
    environments = config.environments.environments
    enabled = sum(1 for e in environments.values() if e.enabled)
    stdout.print(
        Text(
            f"OK: {config.directory}: {len(CONFIG_FILES)} files, "
            f"{len(config.operations.operations)} operations, {len(environments)} environments "
            f"({enabled} enabled), {len(config.agents.runbooks)} runbooks, "
            f"{len(config.agents.diagnosis_rules)} diagnosis rules"
        )
    )


@config_app.command("show")
def config_show(
    ctx: typer.Context,
    file: Annotated[
        str | None,
        typer.Argument(
            help="Only this file: platform, agents, environments, operations, translations."
        ),
    ] = None,
    as_json: JsonOption = False,
    _config_dir: ConfigDirOption = None,
) -> None:
    """Print the effective configuration (environment variables applied, secrets masked)."""
    config = _load(ctx)
    masked = config.masked()
    if file is not None:
        if file not in CONFIG_FILES:
            _fail(f"unknown file {file!r}; one of: {', '.join(CONFIG_FILES)}")
        masked = {CONFIG_FILES[file][0]: masked[CONFIG_FILES[file][0]]}
    if as_json:
        _print_json(masked)
        return
    for file_name, content in masked.items():
        typer.echo(f"# {file_name}")
        typer.echo(yaml.safe_dump(content, sort_keys=False, allow_unicode=True).rstrip())
        typer.echo("")


# --- ops --------------------------------------------------------------------------------


def _operation_json(registry: OperationRegistry, name: str, spec: OperationSpec) -> dict[str, Any]:
    data = spec.model_dump(mode="json")
    data["name"] = name
    return data


@ops_app.command("list")
def ops_list(
    ctx: typer.Context,
    env: Annotated[
        str | None, typer.Option("--env", help="Only operations this environment supports.")
    ] = None,
    as_json: JsonOption = False,
    _config_dir: ConfigDirOption = None,
) -> None:
    """List the universal operations."""
    config = _load(ctx)
    registry = OperationRegistry.from_config(config)
    try:
        operations = registry.operations_for(env)
    except CallValidationError as exc:
        _fail("\n".join(str(p) for p in exc.problems))
    if as_json:
        _print_json([_operation_json(registry, name, spec) for name, spec in operations])
        return
    title = f"Operations on {env}" if env else "Operations"
    columns: list[tuple[str, ColumnKind]] = [
        ("operation", "name"),
        ("risk", "id"),
        ("target", "id"),
        ("environments", "text"),
        ("description", "text"),
    ]
    rows = [
        (
            name,
            _risk_text(spec.risk),
            spec.target,
            ", ".join(t.value for t in spec.environments),
            spec.description,
        )
        for name, spec in operations
    ]
    stdout.print(_fitted_table(title, columns, rows))


def _risk_text(risk: RiskLevel) -> Text:
    style = {"read": "green", "write": "yellow", "destructive": "bold red"}[risk.value]
    return Text(risk.value, style=style)


@ops_app.command("describe")
def ops_describe(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The operation, e.g. get_logs.")],
    as_json: JsonOption = False,
    _config_dir: ConfigDirOption = None,
) -> None:
    """Show one operation: parameters, risk, retries and its command in each environment type."""
    config = _load(ctx)
    registry = OperationRegistry.from_config(config)
    try:
        spec = registry.describe(name)
    except CallValidationError as exc:
        _fail("\n".join(str(p) for p in exc.problems))
    commands = {
        env_type.value: [
            item if isinstance(item, str) else f"[{' '.join(item.argv)}]"
            for item in translation.command
        ]
        for env_type, by_operation in config.translations.translations.items()
        if (translation := by_operation.get(name)) is not None
    }
    if as_json:
        data = _operation_json(registry, name, spec)
        data["commands"] = commands
        _print_json(data)
        return
    stdout.print(Text(f"{name}: {spec.description}", style="bold"))
    stdout.print(Text.assemble("risk: ", _risk_text(spec.risk), f"   target: {spec.target}"))
    stdout.print(
        Text(
            f"timeout: {spec.timeout_seconds:g} s   attempts: {spec.retry.attempts} "
            f"(delay {spec.retry.delay_seconds:g} s, backoff x{spec.retry.backoff_factor:g})"
        )
    )
    if spec.parameters:
        rows: list[tuple[str, ...]] = []
        for parameter_name, parameter in spec.parameters.items():
            allowed = []
            if parameter.minimum is not None or parameter.maximum is not None:
                allowed.append(f"{_num(parameter.minimum)}..{_num(parameter.maximum)}")
            if parameter.enum:
                allowed.append(" | ".join(str(e) for e in parameter.enum))
            if parameter.pattern:
                allowed.append(f"/{parameter.pattern}/")
            if parameter.max_length:
                allowed.append(f"<= {parameter.max_length} chars")
            rows.append(
                (
                    parameter_name,
                    parameter.type.value,
                    "yes" if parameter.required else "",
                    "" if parameter.default is None else str(parameter.default),
                    ", ".join(allowed),
                    parameter.description,
                )
            )
        columns: list[tuple[str, ColumnKind]] = [
            ("name", "name"),
            ("type", "id"),
            ("required", "id"),
            ("default", "name"),
            ("allowed", "text"),
            ("description", "text"),
        ]
        stdout.print(_fitted_table("parameters", columns, rows))
    for env_type, argv in commands.items():
        stdout.print(Text(f"{env_type}: {' '.join(argv)}"))
    for env_type, reason in spec.unsupported.items():
        stdout.print(Text(f"{env_type.value}: unsupported: {reason}", style="dim"))


def _num(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else str(value)


# --- envs -------------------------------------------------------------------------------


@envs_app.command("list")
def envs_list(
    ctx: typer.Context, as_json: JsonOption = False, _config_dir: ConfigDirOption = None
) -> None:
    """List the environments with their type, state and safety policy."""
    config = _load(ctx)
    environments = config.environments.environments
    default = config.platform.platform.default_environment
    if as_json:
        _print_json(
            [
                {
                    "name": name,
                    "default": name == default,
                    **environment.model_dump(mode="json", exclude={"connection"}),
                }
                for name, environment in environments.items()
            ]
        )
        return
    columns: list[tuple[str, ColumnKind]] = [
        ("environment", "name"),
        ("type", "id"),
        ("enabled", "id"),
        ("runs", "text"),
        ("approval", "text"),
        ("description", "text"),
    ]
    rows = [
        (
            f"{name} (default)" if name == default else name,
            environment.type.value,
            "yes" if environment.enabled else "no",
            ", ".join(r.value for r in environment.policy.allowed_risks),
            ", ".join(r.value for r in environment.policy.approval_required) or "-",
            environment.description,
        )
        for name, environment in environments.items()
    ]
    stdout.print(_fitted_table("Environments", columns, rows))


# --- run --------------------------------------------------------------------------------


def _parse_params(pairs: list[str]) -> dict[str, str]:
    parameters: dict[str, str] = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            _fail(f"--param {pair!r}: expected key=value, e.g. --param lines=50")
        if key in parameters:
            _fail(f"--param {key} given twice")
        parameters[key] = value
    return parameters


@app.command("run")
def run(
    ctx: typer.Context,
    operation: Annotated[str, typer.Argument(help="The universal operation, e.g. get_logs.")],
    env: Annotated[
        str | None,
        typer.Option(
            "--env", "--environment", "-e", help="Environment (default from platform.yml)."
        ),
    ] = None,
    target: Annotated[
        str | None, typer.Option("--target", "-t", help="Service, container or workload.")
    ] = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="Parameter as key=value; repeatable.")
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print the translated command; touch nothing (also on a disabled environment).",
        ),
    ] = False,
    yes: Annotated[
        bool,
        typer.Option(
            "--yes", help="Approve an operation the environment's policy requires approval for."
        ),
    ] = False,
    incident: Annotated[
        str | None,
        typer.Option("--incident", help="Count a write against this incident's budget."),
    ] = None,
    as_json: JsonOption = False,
    _config_dir: ConfigDirOption = None,
) -> None:
    """Validate, translate and run one universal operation through the execution gate."""
    config = _load(ctx)
    environment = env or config.platform.platform.default_environment
    registry = OperationRegistry.from_config(config)
    try:
        # A dry run touches nothing, so it may show what a disabled environment would run; a
        # real run is refused there (and the gate validates again, without the allowance).
        call = registry.validate(
            operation, environment, _parse_params(param or []), target, allow_disabled=dry_run
        )
        spec = CommandTranslator.from_config(config).translate(call)
    except CallValidationError as exc:
        _fail("\n".join(str(p) for p in exc.problems))
    except TranslationError as exc:
        _fail(str(exc))

    if dry_run:
        environment_config = config.environments.environments[environment]
        if not environment_config.enabled:
            stderr.print(
                Text(
                    f"note: environment {environment!r} is disabled: only a dry run works there "
                    f"(environments.{environment}.enabled in environments.yml)"
                )
            )
        if as_json:
            _print_json({**spec.model_dump(mode="json"), "command_line": spec.command_line()})
        else:
            stdout.print(Text(f"command:  {spec.command_line()}"))
            stdout.print(Text(f"executor: {spec.executor_call()}"))
            stdout.print(Text(f"risk:     {spec.risk.value}"))
        return

    _run_through_gate(config, spec, call.parameters, yes, incident, as_json)


def _run_through_gate(
    config: UICIConfig,
    spec: CommandSpec,
    parameters: dict[str, Any],
    approved: bool,
    incident: str | None,
    as_json: bool,
) -> None:
    """The execution gate, as for every other entry point; the person at the terminal is the
    actor, and with --yes the approver. Imported here so that listing and dry runs never load
    an executor or its SDK."""
    import getpass
    import uuid

    from agent.incidents.storage import (
        UNRECORDABLE,
        IncidentStore,
        StoreFailure,
        failure_reason,
        shown_url,
    )
    from agent.safety.gate import ExecutionGate, requested_operation

    unusable: tuple[type[Exception], ...] = (*UNRECORDABLE, ValueError)
    try:
        store = IncidentStore.from_config(config)
        known = store.get(incident) if incident else None
    except unusable as exc:
        _fail(
            f"refused: the incident store ({shown_url(config.platform.storage.url)}) cannot be"
            f" used: {failure_reason(exc)}; "
            "without it no operation is recorded, so none runs (platform.yml: storage.url)"
        )
    if incident and known is None:
        _fail(f"no incident {incident!r} (uici incidents list)")
    gate = ExecutionGate(config, store)
    request = requested_operation(
        gate,
        spec,
        parameters,
        f"cli:{getpass.getuser()}",
        "cli",
        approved,
        known.context if known else None,
        f"cli-{uuid.uuid4().hex}",
    )
    try:
        outcome = gate.execute(request)
    except StoreFailure as exc:  # fail closed: what cannot be recorded is not done
        _fail(
            f"refused: the incident store ({shown_url(config.platform.storage.url)}) failed:"
            f" {failure_reason(exc)}; "
            "the operation was not sent, or its outcome could not be recorded "
            "(see `uici writes list --state pending`)"
        )
    finally:
        gate.close()
    if outcome.result is None:
        hint = ""
        if outcome.refused_by == "approval":
            hint = f": review `{spec.command_line()}` and re-run with --yes"
        _fail(f"refused: {outcome.note}{hint}")
    if as_json:
        _print_json({**outcome.result.model_dump(mode="json"), "outcome": outcome.outcome})
    else:
        _print_result(outcome.result)
        if outcome.note:
            stderr.print(Text(outcome.note))
    raise typer.Exit(EXIT_OK if outcome.result.success else EXIT_FAILED)


def _print_result(result: Any) -> None:
    status = Text("ok", style="green") if result.success else Text("failed", style="bold red")
    stdout.print(
        Text.assemble(
            status,
            f"  {result.operation} on {result.environment}"
            + (f" / {result.target}" if result.target else "")
            + f"  ({result.duration_seconds * 1000:.0f} ms)",
        )
    )
    stdout.print(Text(f"command: {' '.join(result.command)}", style="dim"))
    if result.error is not None:
        stderr.print(Text(f"{result.error.kind.value}: {result.error.message}"))
        if result.error.hint:
            stderr.print(Text(f"hint: {result.error.hint}"))
    data = result.data
    rows = data if isinstance(data, list) else [data] if isinstance(data, dict) else []
    # Log lines and command output are printed as text below, not as table cells.
    bulky = {"lines", "output"}
    if rows and all(isinstance(row, dict) for row in rows):
        if len(rows) == 1:
            table = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
            table.add_column(style="bold", no_wrap=True)
            table.add_column(overflow="fold")
            for key, value in rows[0].items():
                if key not in bulky:
                    table.add_row(Text(key), Text(_cell(value)))
            stdout.print(table)
        else:
            columns: list[str] = []
            for row in rows:
                columns.extend(
                    key
                    for key, value in row.items()
                    if key not in columns
                    and key not in bulky
                    and not isinstance(value, dict | list)
                )
            # Whatever the executor reports: names of things, kept whole while they fit.
            kinds: list[tuple[str, ColumnKind]] = [(column, "name") for column in columns]
            cells = [[_cell(row.get(column)) for column in columns] for row in rows]
            stdout.print(_fitted_table(None, kinds, cells))
    if result.output:
        stdout.print(Text(result.output))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return str(value)


@app.command("plan")
def plan(
    ctx: typer.Context,
    alert: Annotated[
        Path, typer.Option("--alert", help="An Alertmanager webhook body or one alert, as JSON.")
    ],
    observations: Annotated[
        Path | None,
        typer.Option("--observations", help="Observations so far (JSON list); adds the diagnosis."),
    ] = None,
    env: Annotated[str | None, typer.Option("--env", "-e", help="Environment override.")] = None,
    dependency: Annotated[
        list[str] | None, typer.Option("--dependency", "-d", help="A declared dependency.")
    ] = None,
    as_json: JsonOption = False,
    _config_dir: ConfigDirOption = None,
) -> None:
    """Plan the four phases for an alert (and diagnose, given observations). Runs nothing."""
    from agent.incidents.context import LabelConventions, context_from_alert, load_observations
    from agent.incidents.models import PHASES
    from agent.incidents.storage import IncidentStore
    from agent.planning.planner import DiagnosticPlanner

    config = _load(ctx)
    try:
        alert_data = json.loads(alert.read_text())
        context = context_from_alert(
            alert_data,
            LabelConventions.from_config(config),
            dependencies=dependency or [],
            environment=env,
        )
        if env:
            context = context.model_copy(update={"environment": env})
        seen = load_observations(observations) if observations else []
    except (OSError, ValueError) as exc:
        _fail(f"bad input: {exc}")
    if context.environment not in config.environments.environments:
        _fail(f"unknown environment {context.environment!r}")
    planner = DiagnosticPlanner(config, IncidentStore.from_config(config))
    plans = [planner.plan_phase(context, phase, seen) for phase in PHASES]
    diagnosis = planner.diagnose(context, seen) if observations else None
    usage = planner.incident_usage(context.incident_id)
    if as_json:
        _print_json(
            {
                "context": context.model_dump(mode="json"),
                "plans": [p.model_dump(mode="json") for p in plans],
                "diagnosis": diagnosis.model_dump(mode="json") if diagnosis else None,
                "usage": usage.model_dump(mode="json"),
            }
        )
        return
    mode = config.agents.diagnostic_agent.planner_mode
    stdout.print(
        Text(
            f"Incident {context.incident_id}: alert "
            f"{context.alert.alertname or '(no alertname)'} on "
            f"{context.service} in {context.environment}; planner mode {mode}"
            + (f" ({planner.llm_unavailable})" if planner.llm_unavailable else ""),
            style="bold",
        )
    )
    for phase_plan in plans:
        stdout.print(
            Text(
                f"\n[{phase_plan.phase}] planner: {phase_plan.planner}, "
                f"runbook: {phase_plan.runbook}"
            )
        )
        for decision in phase_plan.decisions:
            style = {"accepted": "green", "needs_approval": "yellow", "rejected": "red"}[
                decision.decision
            ]
            stdout.print(
                Text.assemble(
                    "  ",
                    Text(f"{decision.decision:<15}", style=style),
                    f"{decision.step.describe()}  [{decision.policy}]",
                )
            )
            if decision.command:
                stdout.print(Text(f"                 $ {' '.join(decision.command)}", style="dim"))
        for note in phase_plan.notes:
            stdout.print(Text(f"  note: {note}", style="dim"))
    if diagnosis is not None:
        stdout.print(
            Text(
                f"\nDiagnosis ({diagnosis.source}): {diagnosis.root_cause} "
                f"[{diagnosis.category}, confidence {diagnosis.confidence:.2f}]",
                style="bold",
            )
        )
        stdout.print(Text(f"  evidence: {', '.join(diagnosis.evidence) or 'none'}"))
        if diagnosis.rules_matched:
            stdout.print(Text(f"  rules matched: {', '.join(diagnosis.rules_matched)}"))
        for action in diagnosis.recommended_actions:
            stdout.print(
                Text(
                    f"  recommended: {action.operation} {action.target or ''} - {action.rationale}"
                )
            )
        for note in diagnosis.notes:
            stdout.print(Text(f"  note: {note}", style="dim"))
    if usage.calls:
        stdout.print(
            Text(
                f"\nLLM usage: {usage.calls} calls, {usage.prompt_tokens} prompt + "
                f"{usage.completion_tokens} completion tokens, "
                f"cost {usage.cost:.6f} {usage.currency}"
            )
        )


# --- incidents ----------------------------------------------------------------------------


def _store(ctx: typer.Context) -> Any:
    from agent.incidents.storage import IncidentStore, StorageError

    try:
        return IncidentStore.from_config(_load(ctx))
    except StorageError as exc:
        _fail(f"the incident store cannot be used: {exc}", EXIT_FAILED)


@writes_app.command("list")
def writes_list(
    ctx: typer.Context,
    state: Annotated[
        str | None, typer.Option("--state", help="pending, done, failed or unknown.")
    ] = None,
    incident: Annotated[str | None, typer.Option("--incident")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10000)] = 50,
    as_json: JsonOption = False,
    _config_dir: ConfigDirOption = None,
) -> None:
    """Every write, newest first, with what it really touched and how it ended."""
    if state not in (None, "pending", "done", "failed", "unknown"):
        _fail(f"--state {state!r}: one of pending, done, failed, unknown")
    records = _store(ctx).writes(state=state, incident_id=incident, limit=limit)
    if as_json:
        _print_json([r.model_dump(mode="json") for r in records])
        return
    columns: list[tuple[str, ColumnKind]] = [
        ("key", "id"),
        ("state", "id"),
        ("operation", "text"),
        ("targets", "text"),
        ("actor", "name"),
        ("entry", "id"),
        ("incident", "id"),
    ]
    rows = [
        (
            record.key,
            record.state,
            record.step.describe(),
            ", ".join(t.name for t in record.targets),
            record.actor,
            record.entry,
            record.incident_id or "",
        )
        for record in records
    ]
    stdout.print(_fitted_table("Writes", columns, rows))


@writes_app.command("resolve")
def writes_resolve(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="The write's key (uici writes list).")],
    outcome: Annotated[str, typer.Argument(help="done: it took effect; failed: it did not.")],
    reason: Annotated[str, typer.Option("--reason", help="What you checked.")] = "",
    who: Annotated[str, typer.Option("--as", help="Who resolves it.")] = "cli",
    force: Annotated[
        bool, typer.Option("--force", help="Also a pending write whose process still runs.")
    ] = False,
    _config_dir: ConfigDirOption = None,
) -> None:
    """Settle a write whose outcome is unknown (or left pending by a dead process) after
    checking the target yourself: until then nothing more is sent to its targets."""
    if outcome not in ("done", "failed"):
        _fail(f"outcome {outcome!r}: done or failed")
    from agent.incidents.audit import AuditLog

    store = _store(ctx)
    record = store.write(key)
    if record is None:
        _fail(f"no write {key!r} (uici writes list)")
    if record.state not in ("unknown", "pending"):
        _fail(f"write {key} is {record.state}; only an unknown or pending write is resolved")
    from agent.safety.gate import process_alive

    if record.state == "pending" and process_alive(record.owner) and not force:
        _fail(
            f"write {key} is being sent right now by a running process ({record.owner}); "
            "wait for it, or pass --force if you know that process is stuck"
        )
    state: Literal["done", "failed"] = "done" if outcome == "done" else "failed"
    store.finish_write(key, state, {**(record.outcome or {}), "resolved_by": who, "reason": reason})
    AuditLog(store.database).record(
        who,
        "writes.resolve",
        f"{record.state} -> {outcome}: {reason}",
        target=f"{record.step.environment}/{record.step.target or '-'}",
        parameters={"key": key},
        incident_id=record.incident_id,
    )
    stdout.print(Text(f"write {key}: {record.state} -> {outcome}"))


@incidents_app.command("list")
def incidents_list(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option("--status", help="open, diagnosing, ...")] = None,
    service: Annotated[str | None, typer.Option("--service")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 50,
    as_json: JsonOption = False,
    _config_dir: ConfigDirOption = None,
) -> None:
    """Recent incidents, newest first."""
    records = _store(ctx).incidents(status=status, service=service, limit=limit)
    if as_json:
        _print_json([r.model_dump(mode="json", exclude={"report"}) for r in records])
        return
    columns: list[tuple[str, ColumnKind]] = [
        ("incident", "id"),
        ("status", "id"),
        ("environment", "name"),
        ("service", "name"),
        ("alert", "name"),
        ("root cause", "text"),
    ]
    rows = [
        (
            record.id,
            record.status,
            record.environment,
            record.service,
            record.context.alert.alertname,
            ((record.report or {}).get("diagnosis") or {}).get("root_cause", ""),
        )
        for record in records
    ]
    stdout.print(_fitted_table("Incidents", columns, rows))


@incidents_app.command("show")
def incidents_show(
    ctx: typer.Context,
    incident_id: Annotated[str, typer.Argument(help="The incident id.")],
    markdown: Annotated[
        bool,
        typer.Option("--markdown", help="Print the report's Markdown source (to pipe or save)."),
    ] = False,
    as_json: JsonOption = False,
    _config_dir: ConfigDirOption = None,
) -> None:
    """The incident's report: evidence, root cause, actions, health."""
    from rich.markdown import Markdown

    from agent.incidents.report import IncidentReport, render_markdown

    record = _store(ctx).get(incident_id)
    if record is None:
        _fail(f"no incident {incident_id!r}; `uici incidents list` shows them")
    if as_json:
        _print_json(record.model_dump(mode="json"))
        return
    if record.report is None:
        stdout.print(
            Text(f"{record.id}: {record.status}; no report yet (flow run {record.flow_run_id})")
        )
        return
    source = render_markdown(IncidentReport.model_validate(record.report))
    if markdown:
        typer.echo(source, nl=False)
        return
    # Rendered, not shown as source: its escapes (web\_api) and markup (##, **) disappear,
    # in a terminal and in a pipe alike; wrapped to the width, not cut (soft_wrap=False).
    stdout.print(Markdown(source), soft_wrap=False)


def _decide(ctx: typer.Context, incident_id: str, approve: bool, reason: str) -> None:
    """A person at a shell with access to the store answers as their OS user (`user@host`,
    via cli): recorded first, then the paused run is woken up; it acts on the record."""
    import getpass
    import socket

    from agent.incidents.approvals import ApprovalDesk, ApprovalRefused

    store = _store(ctx)
    record = store.get(incident_id)
    if record is None:
        _fail(f"no incident {incident_id!r}")
    waiting = [a for a in store.approvals(incident_id, "pending") if a.runner == "flow"]
    if not waiting and store.approvals(incident_id, "pending"):
        _fail(
            f"incident {incident_id} is an operation request: answer it over the API "
            f"(POST /incidents/{incident_id}/approve), which runs the write once approved"
        )
    if not waiting or record.status != "awaiting_approval" or not record.flow_run_id:
        _fail(f"incident {incident_id} is {record.status}; nothing waits for approval")
    from prefect.flow_runs import resume_flow_run

    request = waiting[0]
    desk = ApprovalDesk(store)
    approver = f"{getpass.getuser()}@{socket.gethostname()}"
    try:
        result = desk.answer(incident_id, request.step_key, approver, approve, "cli", "cli", reason)
    except ApprovalRefused as refused:
        _fail(str(refused))
    if result.decision == "pending":
        stdout.print(
            Text(
                f"approved by {approver}: {len(result.approvers)} of {result.required} approvers;"
                f" waiting for another person ({result.step})"
            )
        )
        return
    answer = {
        "approve": approve,
        "approver": approver,
        "reason": reason,
        "step_key": result.step_key,
        "token": request.nonce or "",
    }
    try:
        resume_flow_run(record.flow_run_id, run_input=answer)
    except Exception as exc:
        if desk.undo(result, str(exc)):
            _fail(f"could not resume flow run {record.flow_run_id}: {exc}", EXIT_FAILED)
        # else: the run's pause had ended and it acted on the recorded decision, which stands
    verb = "approved" if approve else "rejected"
    stdout.print(
        Text(f"{verb} by {approver}: {result.step} ($ {result.command}) for incident {incident_id}")
    )


@incidents_app.command("approve")
def incidents_approve(
    ctx: typer.Context,
    incident_id: Annotated[str, typer.Argument()],
    reason: Annotated[str, typer.Option("--reason")] = "",
    _config_dir: ConfigDirOption = None,
) -> None:
    """Approve the write step the incident's flow run is paused for, as your OS user."""
    _decide(ctx, incident_id, True, reason)


@incidents_app.command("reject")
def incidents_reject(
    ctx: typer.Context,
    incident_id: Annotated[str, typer.Argument()],
    reason: Annotated[str, typer.Option("--reason")] = "",
    _config_dir: ConfigDirOption = None,
) -> None:
    """Reject the write step the incident's flow run is paused for: it is not executed."""
    _decide(ctx, incident_id, False, reason)


# --- the agent service -------------------------------------------------------------------


@app.command("serve")
def serve(
    ctx: typer.Context,
    host: Annotated[
        str | None, typer.Option("--host", help="Default: platform.yml service.host.")
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", min=1, max=65535, help="Default: service.port.")
    ] = None,
    no_dispatch: Annotated[
        bool, typer.Option("--no-dispatch", help="Store alerts but start no diagnoses.")
    ] = False,
    _config_dir: ConfigDirOption = None,
) -> None:
    """Run the agent service: Alertmanager webhook, incidents API, events, health, metrics."""
    from infrastructure.configuration.cache import ConfigCache

    try:
        configs = ConfigCache(ctx.obj["config_dir"])
    except ConfigError as exc:
        _fail(str(exc))
    config = configs.get()
    import uvicorn

    from agent.incidents.storage import StorageError
    from agent.logs import configure_logging
    from agent.service.app import create_app

    configure_logging(config.platform.logging.level, config.platform.logging.format)
    try:
        application = create_app(configs, run_dispatcher=not no_dispatch)
    except StorageError as exc:  # fail fast: no service without its store
        _fail(f"uici serve: the incident store cannot be used: {exc}", EXIT_FAILED)
    bind_host = host or config.platform.service.host
    bind_port = port or config.platform.service.port
    stderr.print(Text(f"uici serve: http://{bind_host}:{bind_port} (docs at /docs)"))
    # uvicorn's access log prints paths, never headers: credentials stay out of it.
    uvicorn.run(
        application,
        host=bind_host,
        port=bind_port,
        log_level=config.platform.logging.level.lower(),
        timeout_graceful_shutdown=10,
    )


@keys_app.command("new")
def keys_new(
    name: Annotated[str, typer.Argument(help="The key's name, as in platform.yml api.api_keys.")],
    _config_dir: ConfigDirOption = None,  # unused here, accepted like everywhere
) -> None:
    """Print a fresh API key and the SHA-256 to put in the configuration."""
    from agent.service.auth import key_hash, new_key

    key = new_key()
    stdout.print(Text(f"key (give it to the client; it is not stored): {key}"))
    stdout.print(Text(f"sha256 (for api.api_keys, name {name}): {key_hash(key)}"))


@keys_app.command("hash")
def keys_hash(_config_dir: ConfigDirOption = None) -> None:  # accepted like everywhere
    """Read a key on standard input and print its SHA-256 (for an existing secret)."""
    from agent.service.auth import key_hash

    key = sys.stdin.readline().rstrip("\n")
    if not key:
        _fail("no key on standard input")
    typer.echo(key_hash(key))


@app.command("audit")
def audit(
    ctx: typer.Context,
    incident: Annotated[str | None, typer.Option("--incident", help="Only this incident.")] = None,
    actor: Annotated[str | None, typer.Option("--actor")] = None,
    action: Annotated[
        str | None, typer.Option("--action", help="e.g. operation.restart_service")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10000)] = 50,
    as_json: JsonOption = False,
    _config_dir: ConfigDirOption = None,
) -> None:
    """The audit trail: requests that changed something and every executed operation."""
    from agent.incidents.audit import AuditLog

    records = AuditLog(_store(ctx).database).query(incident, actor, action, None, limit)
    if as_json:
        _print_json([r.model_dump(mode="json") for r in records])
        return
    import datetime as _dt

    columns: list[tuple[str, ColumnKind]] = [
        ("id", "id"),
        ("time", "id"),
        ("actor", "name"),
        ("action", "name"),
        ("target", "name"),
        ("result", "text"),
        ("incident", "id"),
    ]
    rows = [
        (
            str(record.id),
            _dt.datetime.fromtimestamp(record.at, _dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
            record.actor,
            record.action,
            record.target or "",
            record.result,
            record.incident_id or "",
        )
        for record in records
    ]
    stdout.print(_fitted_table("Audit trail", columns, rows))


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        # The store failing mid-command (a database that went away, a lock held too long) is
        # an outage to report, not a bug to trace back.
        from agent.incidents.storage import StorageError, StoreFailure, failure_reason

        if not isinstance(exc, StoreFailure):
            raise
        if isinstance(exc, StorageError):  # already names the store and the fix
            stderr.print(Text(f"the incident store cannot be used: {exc}"))
        else:
            reason = failure_reason(exc)
            fix = (
                "Another process held the store's write lock longer than"
                " storage.lock_timeout_seconds: retry, or find the process that holds it."
                if "locked" in reason or "lock timeout" in reason
                else "Check that the store runs and that UICI_STORAGE_URL names it"
                " (platform.yml storage.url), then retry."
            )
            stderr.print(Text(f"the incident store failed: {reason}. {fix}"))
        sys.exit(EXIT_FAILED)
