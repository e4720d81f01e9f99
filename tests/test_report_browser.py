"""The reports as a user sees them, in a real headless Chromium: Snakemake's own report
(`snakemake --report`) and the standalone report.html of the demo run open without console
errors, every image loads, and the first page shows the provenance.

Chromium is installed with apt where it is missing; the test is skipped, with the reason,
only where that cannot be done, and fails instead where VAFUSION_REQUIRE_BROWSER is set (CI).
"""

from __future__ import annotations

import os

import pytest

from browser import Browser
from conftest import snakemake
from system_packages import Unavailable


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    try:
        chromium = Browser(tmp_path_factory.mktemp("chromium-profile"))
    except Unavailable as err:
        if os.environ.get("VAFUSION_REQUIRE_BROWSER"):
            pytest.fail(f"VAFUSION_REQUIRE_BROWSER is set but Chromium is not available: {err}")
        pytest.skip(f"no Chromium on this machine: {err}")
    yield chromium
    chromium.close()


def expected_figures(config: dict) -> dict[str, set[str]]:
    """Category -> the PNG files the rules flag for the report (trained runs have figures;
    ensembles are rows of the tables only)."""
    models = list(config["learning"]["models"]) + list(config["learning"]["experiments"])
    patterns = config["learning"]["train"]["missing_audio"]["patterns"]
    return {
        "1 Summary": {"ccc_per_fold.png", "ccc_forest.png", "ccc_differences.png"},
        "2 Training": {f"{m}/training_curves.png" for m in models},
        "3 Validation": {f"{m}/{name}.png" for m in models for name in ("ccc_per_trial", "scatter", "traces")},
        "4 Missing audio": {f"missing_audio_{p}.png" for p in patterns}
                           | {f"{m}/{name}.png" for m in models if m.endswith("_iaca")
                              for name in ("gates_over_time", "gates_missing_audio")},
    }


def test_snakemake_report_opens_shows_provenance_first_and_every_image_loads(demo_run, browser):
    results, config = demo_run
    workdir = results.parent
    page = workdir / "snakemake-report.html"
    snakemake(workdir, "--configfile", str(workdir / "config.yaml"), "--report", str(page))

    browser.open(page)
    browser.wait_for("document.querySelector('#app') && document.querySelector('#app').children.length > 0")
    # the first page: the run's provenance, RANDOM-INIT in red (the demo has no weights files)
    front = browser.evaluate("document.body.innerText")
    assert "Provenance of this run" in front and "the effective configuration" in front
    red = browser.evaluate("[...document.querySelectorAll('b')].filter(b => b.style.color === 'rgb(204, 0, 0)')"
                           ".map(b => b.innerText)")
    assert len(red) == 2 and all(text.startswith("RANDOM-INIT") for text in red)  # iresnet50, vggish
    assert "vggish_pca" not in front  # features.vggish.pca is off: not part of the run
    # each fused stream's source, the pretrained ones with their files' sha256
    assert "stream egemaps: openSMILE eGeMAPSv02" in front and "stream landmarks: shape_predictor_68" in front
    # on screen, not pushed above the top (the page is centred vertically: a long one is cut off)
    top = browser.evaluate("[...document.querySelectorAll('h2')].find(h => h.innerText.includes('Provenance'))"
                           ".getBoundingClientRect().top")
    assert 0 <= top < 400
    browser.screenshot(workdir / "snakemake-report-first-page.png")

    # every flagged file is in its category, figures under the model's subcategory
    categories = browser.evaluate("categories")
    flagged = {cat: {path.split("/reports/", 1)[1] for sub in subs.values() for path in sub if path.endswith(".png")}
               for cat, subs in categories.items()}
    assert flagged == expected_figures(config)
    for model in config["learning"]["models"]:
        assert {path.split("/reports/", 1)[1] for path in categories["3 Validation"][model]} == {
            f"{model}/{name}" for name in ("ccc_per_trial.png", "ccc_per_trial.csv", "scatter.png", "traces.png")}
    summary = {path.rsplit("/", 1)[1] for paths in categories["1 Summary"].values() for path in paths}
    assert summary == {"ccc.csv", "summary.md", "ccc_per_fold.png", "ccc_forest.png", "ccc_differences.png",
                       "config.yaml"}

    # each image shown the way the report shows it (its view's <img>), and every caption rendered
    images = browser.evaluate("Object.entries(results).filter(([p, r]) => r.mime_type === 'image/png')"
                              ".map(([p, r]) => p)")
    assert len(images) == sum(len(files) for files in expected_figures(config).values())
    for path in images:
        browser.evaluate(f"app.setView({{content: 'img', contentPath: results[{path!r}].data_uri}})")
        shown = "#app img[src^='data:image/png']"
        browser.wait_for(f"(() => {{ const i = document.querySelector({shown!r}); return i && i.complete; }})()")
        [image] = browser.images(shown)
        assert image["width"] > 300 and image["opaque_bottom"], (path, image)
    captions = browser.evaluate("Object.values(results).map(r => r.caption)")
    assert all(len(c) > 80 for c in captions)
    for category in categories:  # every menu entry renders
        browser.evaluate(f"app.showCategory({category!r})")
    assert browser.errors() == []


def test_standalone_report_opens_and_every_image_loads(demo_run, browser):
    results, config = demo_run
    seen = len(browser.events)
    browser.open(results / "reports" / "report.html")
    images = browser.images()
    assert len(images) == sum(len(files) for files in expected_figures(config).values())
    assert all(i["complete"] and i["width"] > 300 and i["opaque_bottom"] for i in images), images
    assert browser.evaluate("document.querySelectorAll('table').length") >= 3
    assert "RANDOM-INIT" in browser.evaluate("document.body.innerText")
    assert browser.errors(since=seen) == []
