"""The simulator's Flask app: one ``Simulator`` and the blueprints that serve it."""
from __future__ import annotations

from flask import Flask

from waflow import config
from waflow.simulator.control import bp as control_bp
from waflow.simulator.graph import bp as graph_bp
from waflow.simulator.graph_media import bp as graph_media_bp
from waflow.simulator.options import SimulatorOptions
from waflow.simulator.state import EXTENSION, Simulator


def create_simulator(options: SimulatorOptions | None = None) -> Flask:
    """Build the simulator's Flask app; without ``options``, from waflow's settings."""
    simulator = Simulator(options or SimulatorOptions.from_settings(config.settings))
    app = Flask("waflow.simulator", static_folder=None)
    # Documents upload up to 100 MB (§5); a little more for the multipart envelope. /_sim/inbound
    # raises its own bound for a 100 MB file in base64.
    app.config.update(MAX_CONTENT_LENGTH=101 * 2**20)
    app.extensions[EXTENSION] = simulator
    app.register_blueprint(graph_bp)
    app.register_blueprint(graph_media_bp)
    app.register_blueprint(control_bp)
    simulator.start()
    return app
