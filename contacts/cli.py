"""`flask contacts ...`: import, export, dedupe."""
import click
from flask.cli import AppGroup

from contacts.dedupe import RULES as DEDUPE_RULES

contacts_cli = AppGroup("contacts", help="The customer file: import, export, dedupe.")


@contacts_cli.command("dedupe")
@click.option("--rule", "rules", multiple=True, type=click.Choice(DEDUPE_RULES),
              help="A rule to apply; repeat for several. All rules by default.")
@click.option("--merge", is_flag=True, help="Merge each group into its oldest contact.")
@click.option("--yes", is_flag=True, help="Merge without asking for confirmation.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True, help="At most this many groups.")
def dedupe_cmd(rules, merge, yes, limit):
    """Report likely duplicate contacts; with --merge, merge each group into its oldest contact."""
    from contacts.dedupe import find_duplicates, merge_groups
    from envoi.errors import EnvoiError

    groups = find_duplicates(rules or None, limit=limit)
    for n, group in enumerate(groups, 1):
        shared = ", ".join(f"{k}={v}" for k, v in group.values.items())
        click.echo(f"#{n} {group.rule}: contacts {', '.join(map(str, group.contact_ids))} ({shared})")
    people = len({i for g in groups for i in g.contact_ids})
    click.echo(f"{len(groups)} group(s) of likely duplicates, {people} contact(s)"
               + (f"; stopped at --limit {limit}" if len(groups) >= limit else ""))
    if not merge or not groups:
        return
    if not yes:
        click.confirm(f"Merge {len(groups)} group(s), each into its oldest contact?", abort=True)
    merged, failed = 0, 0
    for n, (group, outcome) in enumerate(merge_groups(groups), 1):
        if outcome is None:
            click.echo(f"#{n} skipped: already merged by an earlier group")
        elif isinstance(outcome, EnvoiError):
            failed += 1
            detail = "; ".join(f"{k}: {v}" for k, v in outcome.fields.items())
            click.echo(f"#{n} not merged: {outcome.message}" + (f" ({detail})" if detail else ""), err=True)
        else:
            merged += len(outcome["merged_ids"])
            took = ", ".join(f"{k}={v}" for k, v in outcome["taken"].items()) or "nothing"
            moved = ", ".join(f"{v} {k}" for k, v in outcome["moved"].items() if v) or "no history"
            click.echo(f"#{n} merged {', '.join(map(str, outcome['merged_ids']))} into {outcome['survivor_id']}: "
                       f"moved {moved}; took {took}")
    click.echo(f"merged {merged} contact(s)")
    if failed:
        raise click.ClickException(f"{failed} group(s) could not be merged")


@contacts_cli.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--topic", default=None, help="Subscribe every imported row to this topic (slug).")
@click.option("--map", "maps", multiple=True, metavar="'COLUMN=key'",
              help="Read a file column as a contact key, e.g. --map 'E-mail=email'; repeat for several.")
@click.option("--rejects", "rejects_path", type=click.Path(dir_okay=False), default=None,
              help="Where to write the rejected rows (default: FILE.rejects.csv).")
@click.option("--delimiter", type=click.Choice([",", ";"]), default=None, help="Column separator (default: guessed).")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Validation processes (default: 2 for large files, 0 for small ones).")
def import_cmd(file, topic, maps, rejects_path, delimiter, workers):
    """Import contacts from a CSV file (created, updated or unchanged; bad rows go to a rejects file)."""
    import os
    import sys

    from contacts.importer import import_csv, parse_mapping
    from envoi.cli import fail
    from envoi.errors import EnvoiError

    try:
        mapping = parse_mapping(maps)
        with click.progressbar(length=os.path.getsize(file), label="importing", file=sys.stderr) as bar:
            done = [0]

            def progress(position, _result):
                bar.update(position - done[0])
                done[0] = position

            result = import_csv(file, topic=topic, mapping=mapping, delimiter=delimiter, rejects_path=rejects_path,
                                workers=workers, progress=progress)
    except EnvoiError as err:
        fail(err)
    click.echo(result.summary())
    if result.stale_consents:
        click.echo(f"{result.stale_consents} confirmation(s) ignored: the contact opted out after that consent")
    if result.rejects_path:
        click.echo(f"rejected rows and their reasons: {result.rejects_path}")


@contacts_cli.command("export")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--city")
@click.option("--tag")
@click.option("--topic")
@click.option("--email-status", "email_status")
@click.option("--lifecycle", type=click.Choice(["prospect", "customer", "former"]))
@click.option("--segment", type=int, default=None, help="Only the members of this saved segment (id).")
@click.option("--delimiter", type=click.Choice([",", ";"]), default=",", show_default=True)
def export_cmd(file, city, tag, topic, email_status, lifecycle, segment, delimiter):
    """Export contacts (not erased) to a CSV file in the import's columns; '-' writes to stdout."""
    import sys

    from contacts.exporter import export_csv
    from envoi.cli import fail
    from envoi.errors import EnvoiError

    filters = {"city": city, "tag": tag, "topic": topic, "email_status": email_status, "lifecycle": lifecycle,
               "segment": segment}
    try:
        from contacts.services import contact_filters

        contact_filters(filters)  # refuse a bad filter before truncating the output file
        if file == "-":
            count = export_csv(sys.stdout, filters, delimiter=delimiter)
        else:
            with open(file, "w", encoding="utf-8", newline="") as out:
                count = export_csv(out, filters, delimiter=delimiter)
    except EnvoiError as err:
        fail(err)
    click.echo(f"exported {count} contact(s)" + (f" to {file}" if file != "-" else ""), err=True)
