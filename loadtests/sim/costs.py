"""Cost profiles of the simulator: how long a pipeline call takes on one device, per family.

A profile is a YAML file (``loadtests/sim/profiles/*.yaml``) read by ``load_profile``; the
simulator's engine asks ``FamilyCost`` for the length of each call it runs. Errors name the file
and the field. No Ray, no torch.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from genmedia.loadtests.sim.empirical import check_quantiles, mean_of
from genmedia.models.config_issues import field_errors

PROFILES_DIR = Path(__file__).resolve().parent / "profiles"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FamilyCost(_Strict):
    """Cost model of one family's pipeline call on one device of the profile.

    A call runs ``[load?][call overhead][steps x step time][VAE + per-image overhead]``; one step
    of ``b`` images of ``mp`` megapixels takes
    ``step_fixed_s + step_per_image_s * b * cfg * (mp / ref_megapixels) ** pixel_exponent``.
    """

    step_fixed_s: float = Field(
        ge=0.0,
        description="Seconds per denoising step that do not grow with the batch (kernel "
        "launches, weight reads): why batching pays for small models.",
    )
    step_per_image_s: float = Field(
        gt=0.0, description="Seconds per denoising step per image at ref_megapixels."
    )
    ref_megapixels: float = Field(
        gt=0.0, description="Resolution (width x height / 1e6) the per-image numbers are for."
    )
    pixel_exponent: float = Field(
        default=1.0,
        ge=0.5,
        le=2.5,
        description="How per-image step time grows with resolution: (mp / ref) ** exponent.",
    )
    cfg_multiplier: float = Field(
        default=1.0,
        ge=1.0,
        le=4.0,
        description="Factor on per-image step time when guidance_scale > 1 (classifier-free "
        "guidance runs the denoiser on a doubled batch); 1 for distilled-guidance families.",
    )
    vae_per_image_s: float = Field(
        ge=0.0, description="VAE decode seconds per image at ref_megapixels (linear in pixels)."
    )
    call_overhead_s: float = Field(
        ge=0.0,
        description="Seconds per pipeline call outside the steps: text encoders, scheduler "
        "set-up, the scheduler-to-worker round trip.",
    )
    per_image_overhead_s: float = Field(
        default=0.0,
        ge=0.0,
        description="Seconds per image after decoding (encode, store): the worker does it after "
        "the call left the step gate, so the next call computes meanwhile.",
    )
    load_s: float = Field(
        ge=0.0, description="Seconds to load one model of the family into a replica."
    )
    cv: float = Field(
        default=0.0,
        ge=0.0,
        le=2.0,
        description="Coefficient of variation of a call's duration (log-normal factor with "
        "mean 1, drawn per call from the run's seeded generator): 0 for a deterministic device.",
    )
    duration_quantiles: list[float] | None = Field(
        default=None,
        description="A call's duration factor as equally spaced quantiles (0 %, ..., 100 %) of "
        "a measured distribution with mean 1, drawn per call instead of the log-normal of cv "
        "(which must then be 0). Unset: cv decides.",
    )
    device_share: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        description="Share of the device one computing call keeps busy; calls of replicas packed "
        "on one device run at full speed while their shares sum to at most 1, else all slow "
        "down in proportion. Unset: the per-image part of the step time over the whole step.",
    )

    @field_validator("duration_quantiles")
    @classmethod
    def _factor_quantiles(cls, v: list[float] | None, info: ValidationInfo) -> list[float] | None:
        if v is None:
            return None
        v = check_quantiles(v)
        if abs(mean_of(v) - 1.0) > 0.02:
            raise ValueError(f"must have mean 1 (a duration factor), has {mean_of(v):.3f}")
        if info.data.get("cv", 0.0) > 0:
            raise ValueError("cv is set too: give one duration noise (set cv to 0)")
        return v

    def step_s(self, images: int, megapixels: float, cfg: bool) -> float:
        scale = (megapixels / self.ref_megapixels) ** self.pixel_exponent
        mult = self.cfg_multiplier if cfg else 1.0
        return self.step_fixed_s + self.step_per_image_s * images * mult * scale

    def step_coefficients(self, megapixels: float, cfg: bool) -> tuple[float, float]:
        """``(a, b)`` of one step's seconds ``a·n + b`` for ``n`` images of ``megapixels``:
        ``a = step_per_image_s · cfg_multiplier (guidance on) · (mp / ref) ** pixel_exponent``,
        ``b = step_fixed_s`` (the step engine's cost model, ``EnginePolicy``'s ``a·n + b``)."""
        scale = (megapixels / self.ref_megapixels) ** self.pixel_exponent
        mult = self.cfg_multiplier if cfg else 1.0
        return self.step_per_image_s * mult * scale, self.step_fixed_s

    def share(self, images: int, megapixels: float, cfg: bool) -> float:
        if self.device_share is not None:
            return self.device_share
        total = self.step_s(images, megapixels, cfg)
        return (total - self.step_fixed_s) / total if total > 0 else 1.0

    def post_s(self, images: int, megapixels: float) -> float:
        """VAE decode and storing of a call's images."""
        return self.decode_s(images, megapixels) + self.store_s(images)

    def decode_s(self, images: int, megapixels: float) -> float:
        """The VAE decode: the last phase that holds the worker's gate."""
        return self.vae_per_image_s * images * megapixels / self.ref_megapixels

    def store_s(self, images: int) -> float:
        """Encoding and storing the outputs, after the gate."""
        return self.per_image_overhead_s * images

    def call_s(self, images: int, megapixels: float, steps: int, cfg: bool) -> float:
        """Seconds of one call at full speed, the model already loaded."""
        return (
            self.call_overhead_s
            + steps * self.step_s(images, megapixels, cfg)
            + self.post_s(images, megapixels)
        )


class ControlPlaneCost(_Strict):
    """CPU seconds the control plane (HTTP proxy, gateway, the one scheduler replica, the
    client's own process) spends on one request, per phase, as equally spaced quantiles of a
    measured distribution. The control plane does this work ``control_plane_servers`` pieces
    at a time."""

    submit_s: list[float] = Field(
        description="From the client's send to the 202 (HTTP, validation, admission, job "
        "store write): the request is admitted when it is done."
    )
    follow_s: list[float] = Field(
        description="After the 202 while the request waits or computes (the client's progress "
        "stream, start and step events): queued behind, nobody waits for it."
    )
    done_s: list[float] = Field(
        description="From the call's end to the client seeing the final status (result "
        "hand-off, job store write, the terminal event): the client waits for it."
    )
    after_s: list[float] = Field(
        description="After the client saw the final status (reading the result, clean-up): "
        "queued behind, nobody waits for it."
    )

    @field_validator("submit_s", "follow_s", "done_s", "after_s")
    @classmethod
    def _quantiles(cls, v: list[float]) -> list[float]:
        return check_quantiles(v)


class HostContention(_Strict):
    """Devices that are the host's own CPU cores, shared with the control plane's processes
    (HTTP proxy, gateway, scheduler, the load generator): a computing call runs slower while the
    control plane works. Measured by ``calibrate.py --serving`` (its loaded phase)."""

    compute_slowdown: float = Field(
        ge=1.0,
        le=10.0,
        description="Factor on a computing call's duration while the control plane is busy "
        "(its queue of per-request work is not empty): every call computing on the host runs "
        "at 1 / compute_slowdown of its speed until the control plane is idle again; the "
        "families' step and overhead times are the uncontended ones. Fitted by calibrate.py "
        "from each call's compute time against the control plane's CPU during it, at idle and "
        "under a known background load; 1: no slowdown.",
    )
    control_plane_slowdown: float | None = Field(
        default=None,
        ge=1.0,
        le=10.0,
        description="Factor on a piece of control-plane work (a request's submit, follow, done "
        "or after phase) that starts while a call computes on the host: the other side of the "
        "same shared cores. Unset: compute_slowdown (two sides of one host taken to slow each "
        "other alike); 1: the control plane is not slowed.",
    )

    @property
    def cp_factor(self) -> float:
        """Factor on control-plane work that starts while a call computes."""
        if self.control_plane_slowdown is None:
            return self.compute_slowdown
        return self.control_plane_slowdown


class Profile(_Strict):
    """A device and the cost of each family's calls on it."""

    name: str = Field(min_length=1, description="Short name (used in reports).")
    device: str = Field(min_length=1, description="What one simulated GPU stands for.")
    description: str = Field(default="", description="Where the numbers come from.")
    replica_start_s: float = Field(
        default=0.0,
        ge=0.0,
        description="Seconds from placing a new replica to its first model load (process "
        "start, imports); the scaler's added replicas are ready after it plus their loads.",
    )
    submit_s: float = Field(
        default=0.0,
        ge=0.0,
        description="Seconds from a client's send to the scheduler queueing the job (HTTP, "
        "gateway, job store write).",
    )
    respond_s: float = Field(
        default=0.0,
        ge=0.0,
        description="Seconds from a call's end to the client seeing the result.",
    )
    control_plane_s: float = Field(
        default=0.0,
        ge=0.0,
        description="CPU seconds the control plane (proxy, gateway, the one scheduler replica) "
        "spends on each submit and on each completion, served control_plane_servers at a time: "
        "bursts queue there. 0: not modelled (a large cluster's control plane is not the "
        "bottleneck).",
    )
    control_plane_servers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Pieces of control-plane work (control_plane or control_plane_s) done at "
        "once: each goes to the server that is free first. 1: one at a time; a control plane "
        "of several processes (proxy, gateway, scheduler, the client) on a host of N cores "
        "runs up to N pieces at once.",
    )
    control_plane: ControlPlaneCost | None = Field(
        default=None,
        description="Measured per-phase control-plane CPU per request, instead of the one "
        "control_plane_s (which must then be 0). Unset: control_plane_s decides.",
    )
    host_contention: HostContention | None = Field(
        default=None,
        description="Devices and control plane share the host's CPU cores (a CPU-only "
        "profile): computing calls slow down while the control plane works. Needs a "
        "control-plane model (control_plane or control_plane_s). Unset: the devices are "
        "separate from the host's CPU (a GPU profile), nothing slows them.",
    )
    families: dict[str, FamilyCost] = Field(
        min_length=1, description="Cost model per model family (sd15, sdxl, flux)."
    )

    source: str | None = Field(
        default=None, exclude=True, description="File the profile was read from (set on load)."
    )

    @field_validator("control_plane")
    @classmethod
    def _one_control_plane_model(
        cls, v: ControlPlaneCost | None, info: ValidationInfo
    ) -> ControlPlaneCost | None:
        if v is not None and info.data.get("control_plane_s", 0.0) > 0:
            raise ValueError("control_plane_s is set too: give one of them (set it to 0)")
        return v

    @field_validator("host_contention")
    @classmethod
    def _contention_needs_a_control_plane(
        cls, v: HostContention | None, info: ValidationInfo
    ) -> HostContention | None:
        cp_modelled = (
            info.data.get("control_plane") is not None or info.data.get("control_plane_s", 0) > 0
        )
        if v is not None and not cp_modelled:
            raise ValueError(
                "needs a control-plane model: set control_plane (or control_plane_s > 0)"
            )
        return v

    def cost(self, family: str) -> FamilyCost:
        try:
            return self.families[family]
        except KeyError:
            raise ProfileError(
                self.source or self.name,
                f"families.{family}",
                f"no cost model for this family (the profile has {', '.join(self.families)})",
            ) from None


class ProfileError(ValueError):
    """A profile file that cannot be used, located by file and field."""

    def __init__(self, file: str, field: str, message: str):
        self.file, self.field = file, field
        super().__init__(f"{file}: {field}: {message}")


def resolve_profile_path(name_or_path: str | Path) -> Path:
    """A profile name (``gpu``, ``tiny-cpu``) from ``profiles/``, or a path to a YAML file."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    return PROFILES_DIR / f"{name_or_path}.yaml"


def parse_profile(data: object, file: str) -> Profile:
    if not isinstance(data, dict):
        raise ProfileError(file, "(root)", "must be a mapping")
    try:
        return Profile.model_validate({**data, "source": file})
    except ValidationError as e:
        field, message = field_errors(e)[0]
        raise ProfileError(file, field, message) from None


def load_profile(name_or_path: str | Path) -> Profile:
    path = resolve_profile_path(name_or_path)
    try:
        text = path.read_text()
    except OSError as e:
        known = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
        raise ProfileError(
            str(path), "(file)", f"{e.strerror or e}; built-in profiles: {known}"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "(yaml)"
        raise ProfileError(str(path), where, f"invalid YAML: {e}") from None
    return parse_profile(data, str(path))


def dump_profile(profile: Profile, path: Path, header: str = "") -> Path:
    body = yaml.safe_dump(profile.model_dump(exclude_none=True), sort_keys=False)
    path.write_text(header + body)
    return path
