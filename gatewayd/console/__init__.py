"""The web console's own parts: the sessions of logged-in admin users, the live feed of
running transfers, and the console's static assets (served by `gatewayd.api.console`)."""
