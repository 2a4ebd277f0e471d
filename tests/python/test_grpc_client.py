"""The proto is usable from other languages: a Python client generated from proto/ by
grpcio-tools submits a job to a real `vidfarm serve` and watches it to the end."""

import os
import pathlib
import subprocess
import sys
import tempfile

import grpc
import pytest
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto"
BIN = os.environ.get("VIDFARM_BIN", str(ROOT / "target" / "debug" / "vidfarm"))


@pytest.fixture(scope="module")
def stubs():
    out = tempfile.mkdtemp(prefix="vidfarm-py-")
    rc = protoc.main([
        "grpc_tools.protoc",
        f"-I{PROTO}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        str(PROTO / "vidfarm" / "v1" / "render.proto"),
    ])
    assert rc == 0, "protoc generated the Python stubs"
    sys.path.insert(0, out)
    from vidfarm.v1 import render_pb2, render_pb2_grpc
    return render_pb2, render_pb2_grpc


@pytest.fixture(scope="module")
def server():
    store = tempfile.mkdtemp(prefix="vidfarm-store-")
    proc = subprocess.Popen(
        [BIN, "serve", "--listen", "127.0.0.1:0", "--store", store],
        stdout=subprocess.PIPE, text=True,
    )
    line = proc.stdout.readline()
    assert line.startswith("listening on "), line
    yield line.split()[-1]
    proc.terminate()
    proc.wait(timeout=30)


def test_submit_and_watch_a_job(stubs, server):
    pb, rpc = stubs
    with grpc.insecure_channel(server) as channel:
        client = rpc.RenderServiceStub(channel)
        spec = pb.JobSpec(prompt="a green square moving up on a black background", seconds=4.0, steps=8, seed=11)
        response = client.SubmitJob(pb.SubmitJobRequest(spec=spec, idempotency_key="python-1"))
        assert response.created
        job_id = response.job.job_id
        again = client.SubmitJob(pb.SubmitJobRequest(spec=spec, idempotency_key="python-1"))
        assert again.job.job_id == job_id and not again.created

        # Paused while the watch starts, so the stream must carry the steps still to come (a
        # short job can finish denoising before a watch that starts late sees any).
        paused = client.PauseJob(pb.PauseJobRequest(job_id=job_id))
        assert paused.state == pb.JOB_STATE_PAUSED
        stream = client.WatchJob(pb.WatchJobRequest(job_id=job_id), timeout=120)
        events = [next(stream)]
        assert events[0].job.state == pb.JOB_STATE_PAUSED
        client.ResumeJob(pb.ResumeJobRequest(job_id=job_id))
        events += list(stream)
        assert events[-1].job.state == pb.JOB_STATE_SUCCEEDED
        assert any(e.WhichOneof("detail") == "step" for e in events)

        clip = client.GetClip(pb.GetClipRequest(job_id=job_id))
        assert (clip.frames, clip.fps, clip.width, clip.height) == (33, 8, 64, 64)
        assert len(clip.sha256) == 64 and clip.url.startswith("file://")


def test_bad_input_is_invalid_argument(stubs, server):
    pb, rpc = stubs
    with grpc.insecure_channel(server) as channel:
        client = rpc.RenderServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            client.SubmitJob(pb.SubmitJobRequest(spec=pb.JobSpec(prompt="a red circle", fps=0)))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("spec.fps")
        with pytest.raises(grpc.RpcError) as err:
            client.GetJob(pb.GetJobRequest(job_id="job-0000000000000-00000000"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
