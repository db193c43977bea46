"""The suites' options come from the installed plugin (attention_harness_plugin, entry point
pytest11). It registers the harness half (harness.suite_plugin) when it sees that a run targets
the suites; a run that reaches them another way (a path it could not tell apart) registers it
here, before any suite module is collected."""


def pytest_configure(config):
    from harness import suite_plugin

    suite_plugin.ensure_registered(config)
