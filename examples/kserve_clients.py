"""One server, four clients: ``gpufleet serve orientation --grpc-port`` answered over KServe v2 HTTP
(``tritonclient.http``), KServe v2 gRPC (``tritonclient.grpc``) and ``gpufleet.Client`` over both, with JPEGs of
rotated text whose angle we know. Runs on CPU:

    python examples/kserve_clients.py
"""

from __future__ import annotations

import io
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

import gpufleet
from gpufleet.tools.synth import text_image

ANGLES = [0, 90, 180, 270, 90, 0, 270, 180]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def jpeg(angle: int, seed: int) -> bytes:
    buf = io.BytesIO()
    text_image(size=(224, 224), angle=angle, seed=seed).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def main() -> None:
    port, gport = free_port(), free_port()
    server = subprocess.Popen([sys.executable, "-m", "gpufleet", "serve", "orientation", "--cpu-devices", "1",
                               "--port", str(port), "--grpc-port", str(gport), "--log-level", "warning"])
    try:
        images = np.array([jpeg(a, seed=i) for i, a in enumerate(ANGLES)], dtype=object)
        with gpufleet.Client(f"http://127.0.0.1:{port}", model="orientation") as client:
            deadline = time.monotonic() + 120
            while not client.ready():  # the model loads
                assert server.poll() is None and time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
            ours = client.infer({"input": images})["angle"].tolist()
            single = client.predict(images[0], content_type="image/jpeg")
        with gpufleet.Client(f"grpc://127.0.0.1:{gport}", model="orientation") as client:  # the same, over gRPC
            ours_grpc = client.infer({"input": images})["angle"].tolist()

        h = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        inp = httpclient.InferInput("input", [len(images)], "BYTES")
        inp.set_data_from_numpy(images, binary_data=True)
        over_http = h.infer("orientation", [inp]).as_numpy("angle").tolist()

        g = grpcclient.InferenceServerClient(f"127.0.0.1:{gport}")
        inp = grpcclient.InferInput("input", [len(images)], "BYTES")
        inp.set_data_from_numpy(images)
        over_grpc = g.infer("orientation", [inp], client_timeout=30).as_numpy("angle").tolist()
        g.close()

        print("truth           ", ANGLES)
        print("gpufleet.Client ", ours, "| /predict:", single, "| gRPC:", ours_grpc)
        print("tritonclient.http", over_http)
        print("tritonclient.grpc", over_grpc)
        assert ours == ours_grpc == over_http == over_grpc, "the clients disagree"
        assert single["angle"] == ours[0]
        correct = sum(a == b for a, b in zip(ours, ANGLES))
        print(f"{correct}/{len(ANGLES)} angles right")
        assert correct >= len(ANGLES) - 1, "the orientation model got the rendered text wrong"
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)


if __name__ == "__main__":
    main()
