"""One Locust file per scenario; see loadtest/driver/scenarios.py for what each sends."""
