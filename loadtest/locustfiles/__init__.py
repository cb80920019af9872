"""One Locust file per scenario; see loadtest/scenarios.py for what each sends."""
