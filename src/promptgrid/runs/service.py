"""The run service: a spec's run prepared once (settings, key, output, API, models, what is left) and run
through the generate flow under the output's lease, whichever face asked for it."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from promptgrid.quota.factory import check_quota_reachable
from promptgrid.run_summary import RunSummary
from promptgrid.runs.api import api_for_run, check_api, require_key_unless_sandbox, run_settings
from promptgrid.runs.options import RunOptions
from promptgrid.runs.settled import (
    SANDBOX_MODELS,
    manifest_parts,
    models_key,
    nothing_to_do,
    remember,
    settled_summary,
)
from promptgrid.runs.source import SpecSource, parse_source
from promptgrid.settings import environment_overrides, read_api_settings
from promptgrid.spec.overrides import describe_settings
from promptgrid.spec.schema import LoadedSpec, SweepSpec

if TYPE_CHECKING:
    from promptgrid.api.resolve import Resolution

Say = Callable[[str], None]


@dataclass(frozen=True)
class PreparedRun:
    """A run ready to start: the spec checked against its resolved models, with the settings in force."""

    spec: SweepSpec
    models: Resolution
    options: RunOptions  # as the run goes on with them: a sandbox's URL, limits on its clock
    settled_key: str  # what stands for the models in the output's settled record (promptgrid.runs.settled)


def run_spec(source: SpecSource, options: RunOptions, say: Say, *, sandbox_hint: str) -> RunSummary:
    """Generate every image of a spec that its output does not have yet; the summary of what was done.

    Bad input (spec, settings, a missing key, an unusable or busy output) raises InvalidInput before
    anything is sent; an API that cannot be reached raises ApiUnreachable. `say` takes each note for the
    person running it (settings, models, the sandbox); `sandbox_hint` is how this face asks for a sandbox.
    """
    environment = environment_overrides()  # read once: every later parse of this run is given it
    spec = parse_source(source, options.overrides(), environment)
    settings = read_api_settings(spec.api.base_url)
    if not options.api.sandbox and settings.api_key is None:
        from promptgrid.spec.load import check_spec

        check_spec(spec)  # without a key nothing can be asked: say what is wrong with the spec first
    require_key_unless_sandbox(options.api, settings, sandbox_hint)
    check_output(spec.output)
    check_api(options.api, spec.api.base_url)
    check_quota_reachable(spec.api.quota_url)  # exit 1 in seconds, before Prefect starts
    if options.api.sandbox and (done := settled_summary(spec, SANDBOX_MODELS)) is not None:
        say(done.verdict)  # the sandbox's models are this version's: nothing to ask it
        return done
    with api_for_run(options.api, say) as sandbox_url:
        prepared = prepare(spec, options, sandbox_url, environment, say)
        if isinstance(prepared, RunSummary):
            say(prepared.verdict)
            return prepared
        with output_reserved(prepared.spec.output, options.wait, say):
            summary = generate(prepared)
        settle(spec, prepared)  # the next run of this spec may have nothing left to do: find out now
        return summary


def prepare(
    spec: LoadedSpec, options: RunOptions, sandbox_url: str | None, environment: Mapping[str, Any], say: Say
) -> PreparedRun | RunSummary:
    """Settings as the run will use them (said, each with its origin), then the models resolved and the spec
    checked against them: once, here; the flow takes the result as it is. A summary instead when nothing is
    left to do (`spec` is the run's spec before a sandbox's settings replaced any of it)."""
    api, replaced = run_settings(options.api, spec.api, sandbox_url)
    say(describe_settings(spec, replaced))
    run_options = RunOptions(api, options.output, options.price_per_image, options.report, options.wait)
    loaded = parse_source(spec, run_options.overrides(), environment) if replaced else spec
    models = resolve_models(loaded, api.scale)
    for note in models.notes:
        say(f"model {note}")
    settled_key = SANDBOX_MODELS if options.api.sandbox else models_key(models.to_json())
    done = settled_summary(spec, settled_key)
    if done is not None:
        return done
    parts = manifest_parts(spec.output)  # listed before the manifest is read
    checked = check_models(loaded, models, api.scale)
    prepared = PreparedRun(checked, models, run_options, settled_key)
    done = nothing_left(checked)
    if done is None:
        return prepared
    remember(spec, settled_key, parts, done)
    return done


def settle(spec: LoadedSpec, prepared: PreparedRun) -> None:
    """After a run: when its spec has nothing left, store that for the next run to find at once."""
    parts = manifest_parts(spec.output)
    done = nothing_left(prepared.spec)
    if done is not None:
        remember(spec, prepared.settled_key, parts, done)


def resolve_models(spec: LoadedSpec, time_scale: float) -> Resolution:
    """The models asked of the API (from a notebook's running loop too)."""
    from promptgrid.engine.resolution import resolve_run_models
    from promptgrid.runs.execute import run_blocking

    return run_blocking(lambda: resolve_run_models(spec, time_scale=time_scale))


def check_models(spec: LoadedSpec, models: Resolution, time_scale: float) -> SweepSpec:
    """The spec checked against its resolved models; InvalidInput names every problem."""
    from promptgrid.engine.resolution import resolve_and_check
    from promptgrid.runs.execute import run_blocking

    resolved = models.to_json()
    checked, _ = run_blocking(lambda: resolve_and_check(spec, resolved, time_scale=time_scale))
    return checked


def nothing_left(spec: SweepSpec) -> RunSummary | None:
    """The summary of a run with nothing left to do, worked out without Prefect; None when there is work.

    Only an output with a manifest can have nothing left, so a first run pays nothing for asking.
    """
    from promptgrid.engine.planning import RunPlan, Selection, plan_selection
    from promptgrid.output.manifest.read import part_keys
    from promptgrid.output.sinks import open_sink

    sink = open_sink(spec.output)
    if not part_keys(sink):
        return None
    _, total, tally = plan_selection(RunPlan.from_spec(spec), sink, Selection())
    return None if total else nothing_to_do(spec, sink, tally.skipped, tally.previously_failed)


def generate(prepared: PreparedRun) -> RunSummary:
    """Run the generate flow on the prepared spec (Prefect is imported only now that there is work)."""
    from promptgrid.flows.generate import generate as generate_flow
    from promptgrid.runs.execute import run_flow

    spec, options = prepared.spec, prepared.options
    return run_flow(
        lambda: generate_flow(
            spec_path=str(spec.base_dir / spec.source_path),
            spec_text=spec.source_text,
            output=options.output,
            api_base=options.api.api_base,
            rate_limit=options.api.rate_limit,
            max_concurrent=options.api.max_concurrent,
            polls_count=options.api.polls_count,
            price_per_image=options.price_per_image,
            time_scale=options.api.scale,
            report=options.report,
            wait=options.wait,
            resolved_models=prepared.models.to_json(),
            checked=spec,
            return_state=True,
        )
    )


def check_output(output: str) -> None:
    """InvalidInput (exit 2) with a sentence, before any request, when the output cannot be written."""
    from promptgrid.output.lease import check_writable
    from promptgrid.output.sinks import open_sink

    check_writable(open_sink(output))


@contextlib.contextmanager
def output_reserved(output: str, wait: bool, say: Say) -> Iterator[None]:
    """Take the output's lease before the run (and Prefect) starts, for the run to claim: an output another
    run holds stops the run at once (OutputInUse, exit 2); `wait` waits for it instead."""
    from promptgrid.output.lease import OutputLease, hand_over, lease_name
    from promptgrid.output.sinks import open_sink

    lease = OutputLease(open_sink(output), lease_name(), run_id=f"run-{secrets.token_hex(6)}")
    lease.take(wait=wait, on_wait=lambda text: say(f"note: {text}"))
    lease.start_renewing()
    hand_over(lease)
    try:
        yield
    finally:
        lease.release()
