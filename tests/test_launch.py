"""launch/: dry-run text per backend, the local backend for real, and tpu/slurm against fake gcloud/sbatch."""
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from launch import cli
from launch.plan import REPO_ROOT

CMD = ["python", "-m", "experiments.train", "--config=experiments/configs/tiny_clm.py", "--workdir=/w/run 1"]


def dry(argv, capsys):
  assert cli.main([*argv, "--dry_run", "--", *CMD]) == 0
  return capsys.readouterr().out


def test_local_dry_run(tmp_path, capsys, monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_foo=1 --xla_force_host_platform_device_count=8")
  out = dry(["--backend=local", "--num_processes=2", "--devices_per_process=4", "--port=12345",
             f"--log_dir={tmp_path}/logs", "--timeout_s=600", "--env=A=b c"], capsys)
  env = ("LM_COORDINATOR_ADDRESS=127.0.0.1:12345 LM_NUM_PROCESSES=2 LM_PROCESS_ID={i} JAX_PLATFORMS=cpu "
         "XLA_FLAGS='--xla_cpu_foo=1 --xla_force_host_platform_device_count=4' A='b c'")
  cmd = ("python -m experiments.train --config=experiments/configs/tiny_clm.py '--workdir=/w/run 1' "
         f"> {tmp_path}/logs/process_{{i}}.log 2>&1 &")
  assert out == "\n".join([
      f"# local: 2 processes x 4 CPU devices, coordinator 127.0.0.1:12345, logs in {tmp_path}/logs, timeout 600 s",
      f"mkdir -p {tmp_path}/logs",
      env.format(i=0) + " " + cmd.format(i=0),
      env.format(i=1) + " " + cmd.format(i=1),
      "wait", ""])
  assert not (tmp_path / "logs").exists()


def test_tpu_dry_run(tmp_path, capsys):
  out = dry(["--backend=tpu", "--tpu_name=lm-v4", "--zone=us-central2-b", "--project=proj", "--accelerator_type=v4-32",
             f"--log_dir={tmp_path}", "--job_name=exp1", "--env=LIBTPU_INIT_ARGS=--xla_foo"], capsys)
  vm = "gcloud compute tpus tpu-vm"
  where = "--zone=us-central2-b --project=proj"
  expected = textwrap.dedent(f"""\
      # tpu: lm-v4 (v4-32, us-central2-b)
      # create: create or reuse the TPU VM
      {vm} describe lm-v4 {where} > /dev/null 2>&1 || {vm} create lm-v4 {where} --accelerator-type=v4-32 --version=tpu-ubuntu2204-base
      # sync: copy the code to every worker
      tar -czf /tmp/lm-v4-code.tar.gz --exclude=.git --exclude=__pycache__ --exclude='*.egg-info' --exclude=.venv --exclude=venv --exclude=.pytest_cache --exclude=./runs --exclude=./launch_logs -C {REPO_ROOT} . && {vm} scp /tmp/lm-v4-code.tar.gz lm-v4:lm-code.tar.gz --worker=all {where} && {vm} ssh lm-v4 {where} --worker=all --command='mkdir -p ~/lm && tar -xzf ~/lm-code.tar.gz -C ~/lm'
      # install: install on every worker
      {vm} ssh lm-v4 {where} --worker=all --command='cd ~/lm && python3 -m pip install -e . "jax[tpu]"'
      # run: run the command on all workers
      {vm} ssh lm-v4 {where} --worker=all --command='cd ~/lm && mkdir -p ~/lm-logs && set -o pipefail && {{ LIBTPU_INIT_ARGS=--xla_foo python -m experiments.train --config=experiments/configs/tiny_clm.py '"'"'--workdir=/w/run 1'"'"'; }} 2>&1 | tee ~/lm-logs/exp1-$(hostname).log'
      # fetch: fetch the logs
      mkdir -p {tmp_path} && n=$({vm} describe lm-v4 {where} --format='value(networkEndpoints.len())') && for w in $(seq 0 $((n - 1))); do {vm} scp 'lm-v4:~/lm-logs/exp1-*.log' {tmp_path}/ --worker=$w {where}; done
      """)
  assert out == expected


def test_tpu_dry_run_queued_and_delete(capsys):
  out = dry(["--backend=tpu", "--tpu_name=q", "--zone=z", "--queued", "--spot", "--tpu_steps=create,delete"], capsys)
  qr = "gcloud compute tpus queued-resources"
  assert out == textwrap.dedent(f"""\
      # tpu: q (v4-8, z, queued)
      # create: create or reuse the TPU VM
      gcloud compute tpus tpu-vm describe q --zone=z > /dev/null 2>&1 || {{ {qr} create q --node-id=q --zone=z --accelerator-type=v4-8 --runtime-version=tpu-ubuntu2204-base --spot && while true; do state=$({qr} describe q --zone=z --format='value(state.state)'); echo "queued resource q: $state"; case "$state" in ACTIVE) break;; FAILED|SUSPENDED) exit 1;; esac; sleep 30; done; }}
      # delete: delete the TPU VM
      {qr} delete q --zone=z --force --quiet
      """)


def test_slurm_dry_run(tmp_path, capsys):
  out = dry(["--backend=slurm", "--nodes=2", "--gpus_per_node=8", "--num_processes=16", "--partition=gpu",
             "--account=acct", "--time=01:00:00", "--cpus_per_task=12", "--sbatch_arg=--exclusive",
             "--setup=source .venv/bin/activate", "--env=NCCL_DEBUG=WARN", f"--log_dir={tmp_path}", "--job_name=exp1"],
            capsys)
  assert out == textwrap.dedent(f"""\
      # slurm: write {tmp_path}/exp1.sbatch
      #!/bin/bash
      #SBATCH --job-name=exp1
      #SBATCH --nodes=2
      #SBATCH --ntasks-per-node=8
      #SBATCH --gpus-per-task=1
      #SBATCH --cpus-per-task=12
      #SBATCH --time=01:00:00
      #SBATCH --output={tmp_path}/%x-%j.out
      #SBATCH --partition=gpu
      #SBATCH --account=acct
      #SBATCH --exclusive
      # 16 processes, one per GPU; jax.distributed from the LM_* variables
      set -euo pipefail
      cd {REPO_ROOT}
      source .venv/bin/activate
      export LM_COORDINATOR_ADDRESS="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1):$((20000 + SLURM_JOB_ID % 20000))"
      export NCCL_DEBUG=WARN
      srun --kill-on-bad-exit=1 --output={tmp_path}/%x-%j-%t.log bash -c 'export LM_NUM_PROCESSES="$SLURM_NTASKS" LM_PROCESS_ID="$SLURM_PROCID"; exec python -m experiments.train --config=experiments/configs/tiny_clm.py '"'"'--workdir=/w/run 1'"'"''
      # submit
      sbatch --parsable {tmp_path}/exp1.sbatch
      """)
  assert not (tmp_path / "exp1.sbatch").exists()


def test_slurm_one_process_per_node(tmp_path, capsys):
  out = dry(["--backend=slurm", "--nodes=4", "--gpus_per_node=8", "--process_per=node", "--port=9999",
             f"--log_dir={tmp_path}"], capsys)
  assert "#SBATCH --ntasks-per-node=1\n#SBATCH --gpus-per-node=8\n" in out
  assert "# 4 processes, one per node" in out and 'head -n 1):9999"' in out


@pytest.mark.parametrize("argv,match", [
    (["--backend=local"], "no command"),
    (["--backend=tpu", "--", "true"], "--zone"),
    (["--backend=tpu", "--zone=z", "--num_processes=4", "--", "true"], "does not apply to tpu"),
    (["--backend=tpu", "--zone=z", "--tpu_steps=create,launch", "--", "true"], "unknown step"),
    (["--backend=slurm", "--nodes=2", "--gpus_per_node=4", "--num_processes=4", "--", "true"], "2 x 4 per node = 8"),
    (["--backend=local", "--num_processes=0", "--", "true"], "must be >= 1"),
    (["--backend=local", "--env=NOEQUALS", "--", "true"], "NAME=VALUE"),
])
def test_usage_errors(argv, match, capsys):
  with pytest.raises(SystemExit) as e:
    cli.main([*argv, "--dry_run"])
  assert e.value.code == 2 and match in capsys.readouterr().err


PRINT_ENV = ("import json, os; print(json.dumps({k: os.environ.get(k) for k in ('LM_COORDINATOR_ADDRESS', "
             "'LM_NUM_PROCESSES', 'LM_PROCESS_ID', 'JAX_PLATFORMS', 'XLA_FLAGS', 'EXTRA')}))")


def test_local_two_processes_for_real(tmp_path, capsys):
  code = cli.main(["--backend=local", "--num_processes=2", "--devices_per_process=3", f"--log_dir={tmp_path}",
                   "--env=EXTRA=1", "--timeout_s=60", "--", sys.executable, "-c", PRINT_ENV])
  assert code == 0
  envs = [json.loads(open(tmp_path / f"process_{i}.log").read()) for i in range(2)]
  port = envs[0]["LM_COORDINATOR_ADDRESS"].split(":")[1]
  for i, env in enumerate(envs):
    assert env == {"LM_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "LM_NUM_PROCESSES": "2", "LM_PROCESS_ID": str(i),
                   "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=3", "EXTRA": "1"}
  assert json.loads(capsys.readouterr().out) == envs[0]  # process 0 is echoed


def test_local_failure_terminates_the_others(tmp_path, capsys):
  script = "import os, sys, time; sys.exit(3) if os.environ['LM_PROCESS_ID'] == '1' else time.sleep(60)"
  start = time.monotonic()
  code = cli.main(["--backend=local", "--num_processes=3", f"--log_dir={tmp_path}", "--grace_s=2", "--quiet", "--",
                   sys.executable, "-c", script])
  assert code == 3 and time.monotonic() - start < 20
  assert "process 1 exited with status 3" in capsys.readouterr().err


def test_local_missing_command(tmp_path, capsys):
  assert cli.main(["--backend=local", f"--log_dir={tmp_path}", "--", "no-such-command-xyz"]) == 127
  assert "cannot start 'no-such-command-xyz'" in capsys.readouterr().err


def test_local_timeout(tmp_path, capsys):
  start = time.monotonic()
  code = cli.main(["--backend=local", f"--log_dir={tmp_path}", "--timeout_s=1", "--grace_s=1", "--quiet", "--",
                   sys.executable, "-c", "import time; time.sleep(60)"])
  assert code == 124 and time.monotonic() - start < 20
  assert "timeout after 1 s" in capsys.readouterr().err


def _fake_tool(bin_dir, name, body):
  path = bin_dir / name
  path.write_text("#!/bin/bash\n" + body)
  path.chmod(0o755)


def test_slurm_submit_with_fake_sbatch(tmp_path, monkeypatch, capsys):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  _fake_tool(bin_dir, "sbatch", f'echo "$@" > {tmp_path}/sbatch_args\necho "4242;cluster"\n')
  monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
  code = cli.main(["--backend=slurm", "--nodes=1", "--gpus_per_node=2", f"--log_dir={tmp_path}/logs", "--job_name=j",
                   "--", "python", "-c", "print(1)"])
  assert code == 0
  script = tmp_path / "logs" / "j.sbatch"
  assert (tmp_path / "sbatch_args").read_text().split() == ["--parsable", str(script)]
  assert script.read_text().startswith("#!/bin/bash\n#SBATCH --job-name=j\n")
  assert "submitted job 4242" in capsys.readouterr().out
  subprocess.run(["bash", "-n", str(script)], check=True)  # the script parses


def test_tpu_steps_with_fake_gcloud(tmp_path, monkeypatch):
  """The run step fails: logs are still fetched and the VM deleted; the status comes back."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  _fake_tool(bin_dir, "gcloud", textwrap.dedent(f"""\
      echo "$*" >> {tmp_path}/gcloud_calls
      case "$*" in
        *describe*--format*) echo 2 ;;
        *describe*) exit 1 ;;  # no such TPU yet: create it
        *--command=cd\\ ~/lm\\ \\&\\&\\ mkdir*) exit 7 ;;  # the run step
      esac
      """))
  monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
  src = tmp_path / "src"
  (src / "pkg").mkdir(parents=True)
  (src / "pkg" / "a.py").write_text("x = 1\n")
  name = f"t{os.getpid()}"
  code = cli.main(["--backend=tpu", f"--tpu_name={name}", "--zone=z", f"--src={src}", f"--log_dir={tmp_path}/logs",
                   "--tpu_steps=create,sync,install,run,fetch,delete", "--", "python", "-c", "print(1)"])
  assert code == 7
  calls = (tmp_path / "gcloud_calls").read_text().splitlines()
  verbs = [c.split()[3] for c in calls]
  assert verbs == ["describe", "create", "scp", "ssh", "ssh", "ssh", "describe", "scp", "scp", "delete"]
  assert "--worker=0" in calls[7] and "--worker=1" in calls[8]
  tarball = f"/tmp/{name}-code.tar.gz"
  listing = subprocess.run(["tar", "-tzf", tarball], capture_output=True, text=True).stdout.split()
  os.remove(tarball)
  assert listing == ["./", "./pkg/", "./pkg/a.py"]


@pytest.mark.slow
@pytest.mark.skipif("coordinator_address" not in open(os.path.join(REPO_ROOT, "experiments/train.py")).read(),
                    reason="experiments/train.py has no multi-process flags yet")
def test_local_backend_trains_two_processes(tmp_path):
  """python -m launch runs a real 2-process x 4-device training job from the LM_* variables alone."""
  config = tmp_path / "cfg.py"
  config.write_text(textwrap.dedent(f"""\
      from tests.helpers import tiny_config

      def get_config():
        return tiny_config({str(tmp_path / 'data')!r}, **{{"train.num_steps": 4, "train.eval_every": 4,
                                                            "train.checkpoint_every": 4, "mesh.data": 4, "mesh.fsdp": 2}})
      """))
  workdir = tmp_path / "run"
  r = subprocess.run([sys.executable, "-m", "launch", "--backend=local", "--num_processes=2", "--devices_per_process=4",
                      f"--log_dir={tmp_path}/logs", "--timeout_s=600", "--", sys.executable, "-m", "experiments.train",
                      f"--config={config}", f"--workdir={workdir}"], cwd=REPO_ROOT, capture_output=True, text=True,
                     timeout=660)
  logs = [(tmp_path / "logs" / f"process_{i}.log").read_text() for i in range(2)]
  assert r.returncode == 0, (r.stderr[-2000:], [l[-2000:] for l in logs])
  records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  assert max(rec["step"] for rec in records) == 4
  manifest = json.load(open(workdir / "manifest.json"))
  assert manifest["process_count"] == 2 and len(manifest["devices"]) == 8
