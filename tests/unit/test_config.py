"""Config composition and validation: precedence, the paper's defaults, and one clear error per bad input."""
import pytest

from saul.config.compose import compose, schema_keys
from saul.config.errors import ConfigError
from saul.config.model_size import count_parameters
from saul.config.validate import validate

LOCAL = {"SAUL_SITE": "local"}


def cfg_of(*overrides, env=LOCAL):
    composed = compose(overrides, env=env)
    validate(composed.cfg)
    return composed.cfg


def test_cpt_defaults_carry_the_paper_hyperparameters():
    cfg = compose(["stage=cpt", "model=mixtral-8x7b", "site=adastra"], env={}).cfg
    assert list(cfg.optim.betas) == [0.99, 0.90]
    assert cfg.optim.lr == 2e-5
    assert cfg.train.grad_accum == 4
    assert cfg.train.micro_batch == 8
    assert cfg.train.seq_len == 8192
    assert cfg.parallel == "zero3"
    big = compose(["stage=cpt", "model=mixtral-8x22b", "site=adastra"], env={}).cfg
    assert big.train.micro_batch == 4


def test_paper_architectures_have_the_published_sizes():
    small = count_parameters(compose(["model=mixtral-8x7b", "site=adastra"], env={}).cfg.model)
    big = count_parameters(compose(["model=mixtral-8x22b", "site=adastra"], env={}).cfg.model)
    assert 46.0e9 < small.total < 47.5e9 and 12.5e9 < small.active < 13.2e9
    assert 139e9 < big.total < 143e9 and 38e9 < big.active < 40e9


def test_tiny_preset_overrides_only_what_a_cpu_needs():
    cfg = cfg_of("stage=cpt", "model=tiny-mixtral")
    assert cfg.train.seq_len == 64 and cfg.model.hidden_size == 64
    assert list(cfg.optim.betas) == [0.99, 0.90] and cfg.optim.lr == 2e-5  # stage values survive


def test_command_line_wins_and_run_name_is_derived():
    cfg = cfg_of("stage=cpt", "model=tiny-mixtral", "optim.lr=1e-3", "train.max_steps=7", "optim.betas=[0.9,0.95]")
    assert cfg.optim.lr == 1e-3 and cfg.train.max_steps == 7 and list(cfg.optim.betas) == [0.9, 0.95]
    assert cfg_of("model=tiny-mixtral", "run=mine").run == "mine"


def test_default_run_name_is_the_model_for_every_stage():
    """stage=prepare then stage=cpt without run= must meet in one run directory (same data)."""
    names = {stage: cfg_of(f"stage={stage}", "model=tiny-mixtral").run for stage in ("prepare", "cpt", "anneal")}
    assert set(names.values()) == {"tiny-mixtral"}
    assert cfg_of("stage=cpt", "model=tiny-mixtral", "model.name=my-mixtral").run == "my-mixtral"


def test_open_dict_keys_accept_new_entries():
    cfg = cfg_of("model=tiny-mixtral", "+site.env.MY_VAR=1")
    assert cfg.site.env.MY_VAR == "1"  # environment values are strings


def test_site_is_local_without_slurm_and_says_why(tmp_path):
    composed = compose(["model=tiny-mixtral"], env={"SLURM_CONF": str(tmp_path / "absent.conf")})
    assert composed.site.name == "local"
    assert "no Slurm" in composed.site.reason


def test_site_from_environment_then_cluster_name(tmp_path):
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=saultest\nSlurmctldPort=1\n")
    by_env = compose(["model=tiny-mixtral"], env={"SAUL_SITE": "local", "SLURM_CONF": str(conf)})
    assert by_env.site.name == "local" and "SAUL_SITE" in by_env.site.reason
    by_cluster = compose(["model=tiny-mixtral"], env={"SLURM_CONF": str(conf)})
    assert by_cluster.site.name == "local-slurm" and "saultest" in by_cluster.site.reason


@pytest.mark.parametrize(
    "override, message",
    [
        ("nodez=2", "unknown key 'nodez' (did you mean 'nodes'?)"),
        ("optim.lrr=1e-5", "unknown key 'optim.lrr' (did you mean 'optim.lr'?)"),
        ("nodes=0", "nodes=0 is out of range"),
        ("nodes=-3", "nodes=-3 is out of range"),
        ("optim.lr=-1", "optim.lr=-1.0 is out of range"),
        ("optim.lr=abc", "could not be converted to Float"),
        ("nodes=two", "could not be converted to Integer"),
        ("stage=cpx", "unknown stage 'cpx' (did you mean 'cpt'?)"),
        ("model=mixtral-8x9b", "unknown model 'mixtral-8x9b' (did you mean"),
        ("site=adastr", "unknown site 'adastr' (did you mean 'adastra'?)"),
        ("optim.betas=[0.9]", "optim.betas=[0.9] is out of range"),
        ("parallel=fsdp", "parallel='fsdp' is unknown"),
        ("model.path=/no/such/model", "is not an HF-format model directory"),
        ("train.seq_len=100000", "exceeds model.max_position_embeddings"),
        ("nodes", "is not a key=value override"),
        ("optim.lr=[", "cannot parse override"),
        ("optim.schedule_steps=-1", "optim.schedule_steps=-1 is out of range"),
    ],
)
def test_bad_input_is_one_clear_line(override, message):
    with pytest.raises(ConfigError) as err:
        cfg_of("model=tiny-mixtral", override)
    text = str(err.value)
    assert message in text
    assert "\n" not in text


def test_prepare_refuses_an_empty_synthetic_corpus_before_submit():
    with pytest.raises(ConfigError, match=r"data.num_documents=0 is out of range: it must be > 0"):
        cfg_of("stage=prepare", "model=tiny-mixtral", "data.num_documents=0")


def test_a_model_that_cannot_fit_is_refused_before_submit():
    with pytest.raises(ConfigError, match="needs ~747 GB .* use model=tiny-mixtral"):
        cfg_of("stage=cpt", "model=mixtral-8x7b")


def test_the_big_model_fits_on_96_adastra_nodes_with_zero3():
    cfg = compose(["stage=cpt", "model=mixtral-8x22b", "site=adastra", "nodes=96"], env={}).cfg
    validate(cfg)
    assert cfg.nproc == 8  # one rank per GCD


def test_schema_keys_cover_nested_sections():
    keys = schema_keys()
    assert "optim.lr" in keys and "site.container.image" in keys and "train.seq_len" in keys
    assert keys["site.env"] is True  # open dict


@pytest.mark.parametrize("name", ["../../etc", "/etc", "cpt/../../x", "cpt/", "..", ".", "final", "prepare", "anneal",
                                  "cpt\n", "CPT", " cpt"])
def test_init_from_stage_accepts_only_a_stage_name(name):
    """model.init_from_stage is joined into runs/<run>/<name>/final by the ranks: anything but another
    model stage of the run is refused, with the list of what is accepted."""
    with pytest.raises(ConfigError) as err:
        cfg_of("stage=anneal", "model=tiny-mixtral", f"model.init_from_stage={name!r}")
    text = str(err.value)
    assert text.startswith("model.init_from_stage=") and "is not a stage this one can start from: use one of cpt" in text
    assert "\n" not in text


def test_init_from_stage_names_another_model_stage():
    assert cfg_of("stage=anneal", "model=tiny-mixtral", "model.init_from_stage=cpt").model.init_from_stage == "cpt"
    assert cfg_of("stage=cpt", "model=tiny-mixtral", "model.init_from_stage=anneal").model.init_from_stage == "anneal"


def test_a_zero3_model_too_big_for_the_nodes_asks_for_more_nodes():
    with pytest.raises(ConfigError, match=r"GB of GPU memory per device: add nodes$"):
        cfg_of("stage=cpt", "model=mixtral-8x7b", "site=adastra", "nodes=1")
