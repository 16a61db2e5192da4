"""`gpucost keys ...`: create, list and revoke API keys (stored hashed; a new key is printed once)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    keys = typer.Typer(help="API keys: each bound to one tenant or to admin.", no_args_is_help=True)
    app.add_typer(keys, name="keys")

    @keys.command("create")
    def create(tenant: str = typer.Option(None, help="Bind the key to this tenant."),
               admin: bool = typer.Option(False, "--admin", help="An admin key: every tenant, key management."),
               name: str = typer.Option("", help="A label for the key list.")):
        """Create a key and print it (it is shown only this once)."""
        from api.keys import InvalidKeyRequest, create_key
        from core.settings import get_settings

        try:
            new = create_key(get_settings(), tenant=tenant, admin=admin, name=name)
        except InvalidKeyRequest as exc:
            typer.echo(f"error: {exc}; use --tenant NAME or --admin", err=True)
            raise typer.Exit(2) from exc
        typer.echo(new.key)
        typer.echo(f"key_id {new.key_id}, {'admin' if new.tenant is None else 'tenant ' + repr(new.tenant)}"
                   " (store the key now: only its hash is kept)", err=True)

    @keys.command("dashboard-url")
    def dashboard_url(base: str = typer.Option("http://127.0.0.1:8000", help="Where the dashboard is served.")):
        """Print the dashboard's address with the admin key `gpucost up` uses (made on first call,
        kept in data_dir/admin.key): what `docker compose up` shows."""
        from api.keys import ensure_admin_key
        from core.settings import get_settings

        typer.echo(f"gpucost is up: dashboard on {base.rstrip('/')}/?api_key={ensure_admin_key(get_settings())}")

    @keys.command("list")
    def list_(tenant: str = typer.Option(None), all_: bool = typer.Option(False, "--all", help="Include revoked keys.")):
        """Keys by id (never the keys themselves)."""
        from api.keys import list_keys
        from core.settings import get_settings

        for k in list_keys(get_settings(), tenant=tenant):
            if k["revoked"] and not all_:
                continue
            scope = "admin" if k["admin"] else f"tenant={k['tenant']}"
            typer.echo(f"{k['key_id']}  {scope:30} {k['created_at']}  {'REVOKED ' if k['revoked'] else ''}{k['name']}")

    @keys.command("revoke")
    def revoke(key_id: str):
        """Revoke a key by its id (running APIs stop accepting it within a few seconds)."""
        from api.keys import revoke_key
        from core.settings import get_settings

        if not revoke_key(get_settings(), key_id):
            typer.echo(f"error: no active key with id {key_id!r}", err=True)
            raise typer.Exit(1)
        typer.echo(f"revoked {key_id}")
