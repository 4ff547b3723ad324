"""The dashboard's web application: the JSON API, the page, login and live events."""

import asyncio
import hmac
import logging
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Annotated, Literal

from fastapi import FastAPI, Form, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse
from pydantic import BaseModel, Field

from crev.reading import valid_device_id
from crev.registry_format import format_kg
from crev_ingest import IngestError
from crev_ingest.config import IngestConfig
from crev_ingest.dashboard.queries import DAY_S, SORTS, Queries
from crev_ingest.export import export_configured
from crev_ingest.tiles_http import PREFIX as LOG_PREFIX
from crev_ingest.tiles_http import add_routes as add_log_routes

STATIC = Path(__file__).resolve().parent / "static"
# uPlot, from npm: `make vendor` copies it into static/vendor (git-ignored).
# Without it (a wheel built without npm) the page draws its SVG charts.
VENDOR = {"uPlot.iife.min.js": "text/javascript", "uPlot.min.css": "text/css"}
log = logging.getLogger(__name__)
COOKIE = "crev_token"
PUBLIC_PATHS = {"/login", "/static/style.css"}

# C-REV (SPEC §8) is counted in whole grams: the API gives grams, exactly;
# the page and the consumer's text show them as kg with 3 decimals.
CREV_TODAY = (
    "Grams of C-REV issued from this site's devices for the 30-minute slots that start on the dashboard's "
    "local today ([dashboard] day_offset_h)"
)
CREV_ISSUED = "Grams of C-REV issued from this site's devices, in all"
CREV_RETIRED = "Grams of the C-REV issued from this site's devices that retirements have taken out, in all"


class FleetItem(BaseModel):
    dev: str
    site: str
    status: str
    last_reading_age_s: int | None
    today_self_kwh: float
    today_co2_kg: float
    crev_issued_today_g: int = Field(description=CREV_TODAY.replace("this site's devices", "this device"))
    quarantined: int


class FleetSummary(BaseModel):
    devices: int
    online: int
    offline: int
    quarantined: int
    today_self_kwh: float
    today_co2_kg: float


class Fleet(BaseModel):
    total: int
    page: int
    page_size: int
    items: list[FleetItem]
    summary: FleetSummary


class SiteDevice(BaseModel):
    dev: str
    status: str
    last_reading_age_s: int | None
    quarantined: int


class Gap(BaseModel):
    dev: str
    first_seq: int
    last_seq: int
    opened_ms: int


class Energies(BaseModel):
    gen_kwh: float
    import_kwh: float
    export_kwh: float
    self_kwh: float
    demand_kwh: float


class Site(BaseModel):
    site: str
    devices: list[SiteDevice]
    last_24h: Energies
    renewable_ratio: float | None
    co2_avoided_kg: float
    factor_g_per_kwh: float
    gaps: list[Gap]
    flags_today: list[str]
    crev_issued_today_g: int = Field(description=CREV_TODAY)
    crev_issued_total_g: int = Field(description=CREV_ISSUED)
    crev_retired_total_g: int = Field(description=CREV_RETIRED)


class Slot(BaseModel):
    t: int
    gen_kwh: float
    import_kwh: float
    export_kwh: float
    self_kwh: float
    demand_kwh: float
    gen_w: float
    self_w: float
    demand_w: float


class Consumer(BaseModel):
    site: str
    lang: str
    renewable_share: float | None
    ghg_emissions_kg: float
    average_factor_g_per_kwh: float | None
    grid_factor_g_per_kwh: float
    crev_issued_total_g: int = Field(description=CREV_ISSUED)
    crev_retired_total_g: int = Field(description=CREV_RETIRED)
    summary: str = Field(description="All of the above in a few plain sentences, in the language asked for")


class Problem(BaseModel):
    detail: str


NOT_FOUND: dict[int | str, dict[str, object]] = {404: {"model": Problem, "description": "no such site"}}


class Quarantine(BaseModel):
    total: int
    counts: dict[str, int]


class WitnessStatus(BaseModel):
    witness: str = Field(description="The witness's name: its vkey's name, on its cosignature lines")
    url: str | None = Field(
        description="Where ingest sends checkpoints (`<url>/add-checkpoint`); null when "
        "ingest.toml no longer lists the witness"
    )
    vkey: str | None = Field(description="Its cosignature/v1 verifier key, as configured")
    configured: bool
    status: Literal["up", "retrying", "not contacted"] = Field(
        description="up: its last answer was a cosignature; retrying: the last exchange failed (see error) and "
        "ingest retries with a backoff up to a minute; not contacted: ingest has not sent it a checkpoint yet"
    )
    error: str | None = Field(description="Why the last exchange failed, while retrying")
    checked_ms: int | None = Field(description="Unix ms of ingest's last exchange with the witness")
    cosigned_size: int = Field(description="Tree size of the newest block it cosigned (0: none)")
    cosigned_height: int | None = Field(description="Height of that block")
    cosigned_at: int | None = Field(description="Unix seconds: the timestamp in that cosignature, the witness's clock")
    behind: int = Field(description="Leaves of the newest block it has not cosigned yet")


class Witnesses(BaseModel):
    ledger_size: int = Field(description="Tree size of the newest sealed block (0 before the first)")
    ledger_height: int | None
    witnesses: list[WitnessStatus]


VerdictName = Literal["OK", "SMART_METER_MISMATCH", "UNCHECKED"]
VERDICT_COUNTS = (
    "Slots per verdict, in all (not only those listed): OK, SMART_METER_MISMATCH and UNCHECKED (inputs incomplete)"
)
HELD = "SMART_METER_MISMATCH slots with no release recorded (`crev registry release`): the registry holds them"


class ReconciledSlot(BaseModel):
    slot_t0: int = Field(description="Unix seconds: the start S of the 30-minute slot (S, S+1800]")
    verdict: VerdictName
    meter_id: str | None = Field(description="The smart meter's id, from its fixed-time values (key 12)")
    grid_import_mwh: int | None = Field(description="The certified grid meter's import over the slot, in mWh")
    grid_export_mwh: int | None
    sm_import_mwh: int | None = Field(description="The utility smart meter's import over the slot, in mWh")
    sm_export_mwh: int | None
    tolerance_import_mwh: int | None = Field(description="The largest difference allowed on import, in mWh")
    tolerance_export_mwh: int | None
    detail: str = Field(description="Why: the comparison, or what an UNCHECKED slot lacks")
    released: bool = Field(description="Whether `crev registry release` released the slot (SPEC §13)")
    release_leaf: int | None = Field(description="The ledger leaf of that release")
    release_reason: str | None


class ReconciledDevice(BaseModel):
    dev: str
    counts: dict[str, int] = Field(description=VERDICT_COUNTS)
    held: int = Field(description=HELD)
    slots: list[ReconciledSlot] = Field(description="Its newest slots first, at most `limit`")


class SiteReconciliation(BaseModel):
    site: str
    limit: int
    counts: dict[str, int] = Field(description=VERDICT_COUNTS + ", over the site's devices")
    held: int = Field(description=HELD + ", over the site's devices")
    devices: list[ReconciledDevice] = Field(
        description="The site's devices with a smart meter (those with a verdict); empty when none has one"
    )


def _token(path: Path | None) -> str:
    if path is None:
        raise IngestError("the dashboard needs [dashboard] token_file")
    try:
        token = path.read_text().strip()
    except OSError as err:
        raise IngestError("dashboard token %s cannot be read: %s" % (path, err.strerror)) from err
    if len(token) < 16:
        raise IngestError("dashboard token in %s is shorter than 16 characters; use a long random one" % path)
    return token


def create_app(config: IngestConfig, token: str | None = None) -> FastAPI:
    secret = token if token is not None else _token(config.dashboard_token_file)
    queries = Queries(config.store_location)
    app = FastAPI(
        title="crev dashboard API",
        version="1",
        description="Read-only views of the fleet, the sites and the quarantine. Every request needs the "
        "operator token: `Authorization: Bearer TOKEN` (or the cookie the login page sets).",
        docs_url=None,
        redoc_url=None,
        openapi_url="/api/v1/openapi.json",
        responses={401: {"model": Problem, "description": "no valid operator token"}},
    )

    def authorised(request: Request) -> bool:
        header = request.headers.get("authorization", "")
        offered = header[7:] if header.lower().startswith("bearer ") else request.cookies.get(COOKIE, "")
        return hmac.compare_digest(offered.encode(), secret.encode())

    @app.middleware("http")
    async def require_token(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        # The log's tiles are public (SPEC §11): anyone may mirror and check it.
        if request.url.path in PUBLIC_PATHS or request.url.path.startswith(LOG_PREFIX) or authorised(request):
            return await call_next(request)
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": "a valid operator token is required"}, status_code=401)
        return RedirectResponse("/login", status_code=303)

    add_log_routes(app, config.store_location)

    def today() -> tuple[str, int]:
        """The dashboard's local day (as the ``daily`` table names it) and the Unix second it starts at."""
        now = int(time.time())
        offset = int(config.day_offset_h * 3600)
        return config.local_day(now), (now + offset) // DAY_S * DAY_S - offset

    @app.get("/api/v1/fleet", response_model=Fleet, summary="Every device, paged, with today's totals")
    def fleet(
        page: Annotated[int, Query(ge=1, le=100000)] = 1,
        page_size: Annotated[int, Query(ge=1, le=500)] = 50,
        sort: Literal["dev", "site", "status", "last_reading", "today_self", "quarantined"] = "dev",
        order: Literal["asc", "desc"] = "asc",
        q: Annotated[str, Query(max_length=64)] = "",
        status: Literal["online", "offline", "unknown"] | None = None,
    ) -> dict[str, object]:
        assert sort in SORTS
        day, day_start = today()
        return queries.fleet(day, day_start, page, page_size, sort, order == "desc", q, status)

    def site_or_404(site: str) -> dict[str, object]:
        day, day_start = today()
        found = queries.site(site, day, day_start, int(time.time()) - 86400)
        if found is None:
            raise HTTPException(status_code=404, detail="no site %r" % site)
        return found

    def factor(site: str) -> float:
        return config.site_g_per_kwh.get(site, config.default_g_per_kwh)

    @app.get(
        "/api/v1/sites/{site}", response_model=Site, summary="One site over the last 24 hours", responses=NOT_FOUND
    )
    def site_view(site: Annotated[str, PathParam(max_length=128)]) -> dict[str, object]:
        found = site_or_404(site)
        self_mwh, demand_mwh = int(found["self_mwh"]), int(found["demand_mwh"])  # type: ignore[call-overload]
        return {
            **found,
            "renewable_ratio": self_mwh / demand_mwh if demand_mwh else None,
            "co2_avoided_kg": self_mwh * factor(site) / 1e9,
            "factor_g_per_kwh": factor(site),
        }

    @app.get(
        "/api/v1/sites/{site}/series",
        response_model=list[Slot],
        summary="Energy and power per time slot",
        responses=NOT_FOUND,
    )
    def series(
        site: Annotated[str, PathParam(max_length=128)],
        hours: Annotated[int, Query(ge=1, le=168)] = 24,
        slot_s: Annotated[int, Query(ge=60, le=86400)] = 1800,
    ) -> list[dict[str, object]]:
        site_or_404(site)
        return queries.series(site, int(time.time()) - hours * 3600, slot_s)

    @app.get(
        "/api/v1/sites/{site}/consumer",
        response_model=Consumer,
        summary="The consumer's view, in plain words",
        responses=NOT_FOUND,
    )
    def consumer(
        site: Annotated[str, PathParam(max_length=128)], lang: Literal["en", "ja"] = "en"
    ) -> dict[str, object]:
        found = site_or_404(site)
        self_mwh, demand_mwh, import_mwh = (int(found[k]) for k in ("self_mwh", "demand_mwh", "import_mwh"))  # type: ignore[call-overload]
        grid = factor(site)
        emissions_g = import_mwh * grid / 1e6  # renewable self-consumption emits nothing
        share = self_mwh / demand_mwh if demand_mwh else None
        average = emissions_g / (demand_mwh / 1e6) if demand_mwh else None
        issued, retired = int(found["crev_issued_total_g"]), int(found["crev_retired_total_g"])  # type: ignore[call-overload]
        return {
            "site": site,
            "lang": lang,
            "renewable_share": share,
            "ghg_emissions_kg": emissions_g / 1000,
            "average_factor_g_per_kwh": average,
            "grid_factor_g_per_kwh": grid,
            "crev_issued_total_g": issued,
            "crev_retired_total_g": retired,
            "summary": _consumer_text(lang, share, emissions_g / 1000, average, grid, issued, retired),
        }

    @app.get(
        "/api/v1/sites/{site}/reconciliation",
        response_model=SiteReconciliation,
        summary="The smart-meter reconciliation of the site's devices (SPEC §13), newest slots first",
        responses=NOT_FOUND,
    )
    def reconciliation(
        site: Annotated[str, PathParam(max_length=128)], limit: Annotated[int, Query(ge=1, le=500)] = 48
    ) -> dict[str, object]:
        found = queries.reconciliation(site, limit)
        if found is None:
            raise HTTPException(status_code=404, detail="no site %r" % site)
        return found

    @app.get("/api/v1/quarantine", response_model=Quarantine, summary="Quarantined messages by reason")
    def quarantine() -> dict[str, object]:
        counts = queries.quarantine()
        return {"total": sum(counts.values()), "counts": counts}

    configured_witnesses = [(w.vkey.name, w.url, w.vkey.vkey()) for w in config.witnesses]

    @app.get(
        "/api/v1/witnesses",
        response_model=Witnesses,
        summary="Each witness (SPEC §11): the size it last cosigned, when, and whether ingest reaches it",
    )
    def witnesses() -> dict[str, object]:
        return queries.witnesses(configured_witnesses)

    @app.get(
        "/api/v1/export",
        summary="An auditor's evidence bundle for one device and range",
        response_class=FileResponse,
        responses={
            200: {"content": {"application/cbor": {}}},
            400: {"model": Problem, "description": "not a device id"},
            404: {"model": Problem, "description": "the device is not enrolled, or has no readings in the range"},
            409: {"model": Problem, "description": "readings in the range are not sealed yet; try again shortly"},
        },
    )
    def export(
        device: Annotated[str, Query(pattern="^[a-z0-9][a-z0-9-]{2,62}$")],
        start: Annotated[int, Query(alias="from", ge=0, le=2**40)],
        end: Annotated[int, Query(alias="to", ge=0, le=2**40)],
    ) -> Response:
        # Only a device id and two numbers come from the request; the file
        # name is ours. Anything else is refused before touching the disk.
        if not valid_device_id(device):
            raise HTTPException(status_code=400, detail="not a device id")
        if end <= start:
            raise HTTPException(status_code=404, detail="the range is empty: 'to' must be after 'from'")
        directory = tempfile.mkdtemp(prefix="crev-export-")
        out = Path(directory) / ("%s-%d-%d.bundle" % (device, start, end))
        try:
            export_configured(config.path, device, start, end, out)
        except IngestError as err:
            # Not enrolled, or nothing in the range: there is no such bundle.
            status = 409 if "not sealed" in str(err) else 404
            raise HTTPException(status_code=status, detail=str(err)) from err
        return FileResponse(out, media_type="application/cbor", filename=out.name)

    @app.get("/api/v1/events", summary="Server-sent events: 'update' whenever the views change")
    async def events(request: Request) -> StreamingResponse:
        async def stream() -> AsyncIterator[bytes]:
            last = None
            while not await request.is_disconnected():
                version = await asyncio.to_thread(queries.version)
                if version != last:
                    last = version
                    yield b"event: update\ndata: %d %d %d\n\n" % version
                else:
                    yield b": keep-alive\n\n"
                await asyncio.sleep(1.0)

        return StreamingResponse(stream(), media_type="text/event-stream")

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_page() -> HTMLResponse:
        return HTMLResponse((STATIC / "login.html").read_text())

    @app.post("/login", include_in_schema=False)
    def login(token: Annotated[str, Form()], request: Request) -> Response:
        if not hmac.compare_digest(token.strip().encode(), secret.encode()):
            return HTMLResponse((STATIC / "login.html").read_text().replace("<!--error-->", "Wrong token."), 401)
        response = RedirectResponse("/", status_code=303)
        secure = request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"
        response.set_cookie(COOKIE, secret, httponly=True, samesite="strict", secure=secure, max_age=12 * 3600)
        return response

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text())

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        files = {"app.js": "text/javascript", "style.css": "text/css"}
        if name not in files:
            raise HTTPException(status_code=404)
        return Response((STATIC / name).read_bytes(), media_type=files[name])

    missing_warned = False

    @app.get("/static/vendor/{name}", include_in_schema=False)
    def vendor(name: str) -> Response:
        nonlocal missing_warned
        if name not in VENDOR:
            raise HTTPException(status_code=404)
        try:
            body = (STATIC / "vendor" / name).read_bytes()
        except FileNotFoundError:
            if not missing_warned:
                missing_warned = True
                log.warning(
                    "%s is not in the package (run `make vendor`): the dashboard draws its plain SVG charts", name
                )
            raise HTTPException(status_code=404) from None
        return Response(body, media_type=VENDOR[name])

    return app


def _consumer_text(
    lang: str,
    share: float | None,
    emissions_kg: float,
    average: float | None,
    grid: float,
    issued_g: int,
    retired_g: int,
) -> str:
    if lang == "ja":
        crev = "これまでに発行された C-REV は%s kg-CO2、そのうち償却済みは%s kg-CO2です。" % (
            format_kg(issued_g),
            format_kg(retired_g),
        )
        if share is None or average is None:
            return "過去24時間のデータはまだありません。" + crev
        return (
            "過去24時間に使った電気の%.0f%%は、ご自身の再生可能エネルギーでまかなわれました。"
            "温室効果ガス排出量は%.2f kg-CO2、平均排出係数は%.0f g-CO2/kWh(系統電力のみなら%.0f)です。"
            % (share * 100, emissions_kg, average, grid)
        ) + crev
    crev = (
        "C-REV issued for your self-consumed renewable power so far: %s kg-CO2, of which %s kg-CO2 has been retired."
        % (
            format_kg(issued_g),
            format_kg(retired_g),
        )
    )
    if share is None or average is None:
        return "No data from the last 24 hours yet. " + crev
    return (
        "In the last 24 hours, %.0f%% of the electricity you used came from your own renewable power. "
        "Your greenhouse gas emissions were %.2f kg-CO2, an average of %.0f g-CO2 per kWh "
        "(the grid alone would be %.0f). " % (share * 100, emissions_kg, average, grid)
    ) + crev
