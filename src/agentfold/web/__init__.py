"""`agentfold serve`: a web inspector over any store, server-rendered, every page with a JSON twin.

Pages read through the store's public interface and the inspection logic the command line uses
(`agentfold.runtime.inspect`); nothing here runs workflow code. Actions (sending a signal, ...) are off unless the
server was started with `--allow-actions` and a token, and each one is an event naming who did it.
"""

from agentfold.web.app import create_app
from agentfold.web.settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]
