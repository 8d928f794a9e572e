"""Workflow files: parsing, ${...} expressions, and every check that runs before any job."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cryospa.cli.main import main as cli
from cryospa.project.project import Project
from cryospa.workflow.spec import (
    WorkflowError,
    check_workflow,
    evaluate,
    find_job_type,
    parse_workflow,
)
from cryospa.workflow.templates import template_names, template_text

HEAD = """
steps:
  - name: movies
    job: import movies
    params: {movies: Raw/*.tif, angpix: 1.0}
"""


def _problems(text: str, project: Project | None = None, **kwargs: object) -> list[str]:
    with pytest.raises(WorkflowError) as info:
        wf = parse_workflow(text, source="wf.yaml", strict=project is None)
        if project is not None:
            check_workflow(wf, project.root, **kwargs)  # type: ignore[arg-type]
    return info.value.problems


@pytest.fixture
def raw(project: Project) -> Project:
    folder = project.root / "Raw"
    folder.mkdir()
    (folder / "a.tif").write_bytes(b"")
    return project


def test_a_valid_chain_parses_with_names_normalised(raw: Project) -> None:
    wf = parse_workflow(HEAD + """
  - name: motion
    job: MotionCorr
    inputs: {movies: movies}
    params: {--patches-x: 1, patches_y: 2, dose-per-frame: 1.5, j: 2}
""")
    motion = wf.step("motion")
    assert motion.job == "motioncorr"
    assert motion.params == {"patches_x": 1, "patches_y": 2, "dose_per_frame": 1.5}
    assert motion.j == 2
    assert [(r.step, r.output) for r in motion.inputs["movies"]] == [("movies", None)]
    assert check_workflow(wf, raw.root) == []
    assert [s.name for s in wf.until("movies")] == ["movies"]


def test_expressions_and_text_substitution() -> None:
    wf = parse_workflow("""
vars:
  data: /data/run1
  angpix: 0.885
  half: ${angpix / 2}
steps:
  - name: movies
    job: import movies
    params: {movies: "${data}/Movies/*.tiff", angpix: "${angpix * 360 / 256}", kv: "${200}"}
""")
    p = wf.step("movies").params
    assert p["movies"] == "/data/run1/Movies/*.tiff"
    assert p["angpix"] == pytest.approx(0.885 * 360 / 256)
    assert p["kv"] == 200
    assert wf.variables["half"] == pytest.approx(0.4425)
    assert evaluate("round(max(1, 2.6) * 2) // 3 + -1", {}) == 0
    with pytest.raises(ValueError, match="unknown variable 'apix'"):
        evaluate("apix * 2", {"angpix": 1.0})
    with pytest.raises(ValueError, match="only variables, numbers"):
        evaluate("__import__('os').getcwd()", {})
    with pytest.raises(ValueError, match="division by zero"):
        evaluate("1 / 0", {})


def test_shape_errors_name_the_step_and_the_fix() -> None:
    problems = _problems("""
steps:
  - name: movies
    job: import movies
    param: {movies: x}
  - name: movies
    job: motioncorr
    inputs: {movies: later}
  - name: ctf
    job: ctffind
    inputs: {micrographs: ctf}
  - name: later
    job: pick log
    inputs: {micrographs: ctf}
    params: {threshold: "${nothing + 1}"}
  - job: extract
""")
    text = "\n".join(problems)
    assert "step 2 and step 1 are both named 'movies'" in text
    assert "step 'movies': unknown key(s) param" in text and "under params:" in text
    assert ("step 'movies' (motioncorr): input movies: step 'later' comes later (step 4; this "
            "is step 2)") in text
    assert "move 'later' before 'movies'" in text
    assert "step 'ctf' (ctffind): input micrographs: 'ctf' is this step itself" in text
    assert "unknown variable 'nothing'" in text
    assert "step 5: give it a name:" in text
    assert len(problems) == 6


def test_yaml_and_top_level_errors() -> None:
    assert "not valid YAML" in _problems("steps: [a, b")[0]
    assert "steps:" in _problems("- just a list")[0]
    problems = _problems("stepz: []\n")
    assert "unknown top-level key(s) stepz" in problems[0]
    assert "'steps:' must be a non-empty list" in problems[1]


def test_unknown_job_type_and_parameter_list_the_valid_ones(raw: Project) -> None:
    problems = _problems(HEAD + """
  - name: motion
    job: motioncor
    inputs: {movies: movies}
  - name: motion2
    job: motioncorr
    inputs: {movies: movies}
    params: {patches: 5, stream: yes}
""", raw)
    assert problems[0].startswith("step 'motion' (motioncor): job type 'motioncor' is not "
                                  "registered")
    assert "did you mean 'motioncorr'?" in problems[0]
    assert "run the steps before it with --until movies" in problems[0]
    assert problems[1].startswith("step 'motion2' (motioncorr): unknown parameter patches ")
    assert "valid: first-frame-sum, last-frame-sum," in problems[1]
    assert "patches-x, patches-y" in problems[1] and problems[1].endswith(", device, j)")
    assert problems[2] == ("step 'motion2' (motioncorr): stream is not a parameter of a step: "
                           "--stream of `cryospa run`")


def test_parameter_values_are_checked_as_on_the_command_line(raw: Project) -> None:
    problems = _problems(HEAD + """
  - name: motion
    job: motioncorr
    inputs: {movies: movies}
    params: {patches-x: 0}
  - name: ctf
    job: ctffind
    inputs: {micrographs: motion}
    params: {exhaustive: maybe, j: 0}
""", raw)
    assert problems[0].startswith("step 'ctf' (ctffind): j: 0: the number of worker processes")
    assert problems[1] == ("step 'motion' (motioncorr): --patches-x 0 is out of range (>= 1 and "
                           "<= 50)")
    assert problems[2] == "step 'ctf' (ctffind): --exhaustive: 'maybe' is not yes/no"


def test_missing_files_and_inputs(raw: Project) -> None:
    problems = _problems("""
steps:
  - name: movies
    job: import movies
    params: {movies: Elsewhere/*.tif, angpix: 1.0, gain: gain.mrc}
  - name: mics
    job: import micrographs
    params: {micrographs: Raw/*.tif, angpix: 1.0}
  - name: ctf
    job: ctffind
    inputs: {micrographs: mics, mics: mics}
  - name: extract
    job: extract
    inputs: {micrographs: nothing_here.star}
  - name: templates
    job: pick template
    inputs: {micrographs: ctf, references: ctf}
  - name: picks
    job: pick log
    inputs: {micrographs: "ctf:particles"}
  - name: more
    job: pick log
""", raw)
    text = "\n".join(problems)
    assert "step 'movies' (import movies): Elsewhere/*.tif: --movies: the pattern matches no " \
           "file" in text
    assert "step 'ctf' (ctffind): unknown input mics (valid: micrographs)" in text
    assert ("step 'extract' (extract): input micrographs: 'nothing_here.star' is no earlier "
            "step, no job of the project and no file") in text
    assert ("step 'templates' (pick template): input references: step 'ctf' (ctffind) makes "
            "no ClassAverages (it makes: micrographs (MicrographSet))") in text
    assert ("step 'picks' (pick log): input micrographs: step 'ctf' (ctffind) has no output "
            "'particles' (it has: micrographs (MicrographSet))") in text
    assert ("step 'more' (pick log): input micrographs (a MicrographSet) is required") in text
    # the gain file is only checked once the pattern passes (one problem per step's params)
    assert len(problems) == 6
    # in a streamed step the pattern's folder must exist, the files not yet
    wf = parse_workflow(HEAD.replace("Raw/*.tif", "Raw/*.tiff"))
    with pytest.raises(WorkflowError, match="matches no file"):
        check_workflow(wf, raw.root)
    assert check_workflow(wf, raw.root, streamed=frozenset({"movies"})) == []


def test_job_type_not_registered_is_an_error_only_for_steps_that_run(raw: Project) -> None:
    name = "refine3d-next"  # a job type that no installation registers
    text = HEAD + f"""
  - name: refine
    job: {name}
    inputs: {{particles: movies}}
    params: {{symmetry: D2}}
"""
    wf = parse_workflow(text)
    with pytest.raises(WorkflowError, match=f"job type '{name}' is not registered in this "
                       "installation of cryospa .*run the steps before it with --until movies"):
        check_workflow(wf, raw.root)
    warnings = check_workflow(wf, raw.root, until="movies")
    assert len(warnings) == 1 and "(after --until: not run now)" in warnings[0]
    with pytest.raises(WorkflowError, match="--until nope: no such step"):
        wf.until("nope")


def test_tutorial_template(raw: Project, simulated) -> None:  # type: ignore[no-untyped-def]
    assert "tutorial" in template_names()
    text = template_text("tutorial")
    data = yaml.safe_load(text)
    values = data["vars"]
    assert (values["angpix"], values["kv"], values["cs"], values["dose_per_frame"]) == (
        0.885, 200, 1.4, 1.277)
    sim = simulated("--preset", "tiny")
    mine = (text.replace("/data/relion30_tutorial/Movies/*.tiff", f"{sim}/Movies/*.tiff")
            .replace("/data/relion30_tutorial/Movies/gain.mrc", f"{sim}/gain.mrc"))
    wf = parse_workflow(mine)
    steps = {s.name: s for s in wf.steps}
    assert steps["movies"].params["angpix"] == 0.885
    assert (steps["log_picks"].params["diam_min"], steps["log_picks"].params["diam_max"]) == (
        150, 180)
    assert (steps["log_particles"].params["box"], steps["log_particles"].params["rescale"]) == (
        256, 64)
    assert steps["log_classes"].params["classes"] == 20
    assert steps["initial_model"].params["symmetry"] == "D2"
    assert steps["refine"].params["symmetry"] == "D2"
    assert (steps["fine_particles"].params["box"],
            steps["fine_particles"].params["rescale"]) == (360, 256)
    assert steps["log_particles"].params["bg_diameter"] == 200
    assert steps["reference"].params["angpix_out"] == pytest.approx(1.244, abs=1e-3)
    assert steps["reference"].params["box_out"] == 256
    # at twice the pixel size the boxes keep their size in Å
    binned = parse_workflow(mine.replace("angpix: 0.885 ", "angpix: 1.77 "))
    steps = {s.name: s for s in binned.steps}
    assert (steps["particles"].params["box"], steps["particles"].params["rescale"]) == (128, 64)
    assert (steps["fine_particles"].params["box"],
            steps["fine_particles"].params["rescale"]) == (180, 180)
    assert steps["reference"].params["angpix_out"] == pytest.approx(1.77)
    # everything up to the 2D selection is available and valid today
    check_workflow(wf, raw.root, until="good_particles")
    three_d = [s for s in ("initial-model", "class3d", "refine3d") if find_job_type(s) is None]
    if three_d:
        with pytest.raises(WorkflowError) as info:
            check_workflow(wf, raw.root)
        assert len(info.value.problems) == len(three_d)
        assert all("is not registered" in p for p in info.value.problems)
    else:
        check_workflow(wf, raw.root)


def test_template_command_prints_the_template(capsys: pytest.CaptureFixture[str],
                                              tmp_path: Path) -> None:
    assert cli(["workflow", "template", "tutorial"]) == 0
    printed = capsys.readouterr().out
    assert printed == template_text("tutorial")
    assert cli(["workflow", "template", "nope"]) == 2
    assert "no workflow template 'nope'" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(HEAD + "  - name: x\n    job: nope\n")
    assert cli(["workflow", "check", str(bad)]) == 2
    assert cli(["run", str(bad), "--project", str(tmp_path / "P")]) == 2
    assert not (tmp_path / "P").exists()  # a bad file makes no project
