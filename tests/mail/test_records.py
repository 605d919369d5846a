from toolcallstore.mail.base import DkimKey, DomainKeys
from toolcallstore.mail.records import mail_records, parse_zone

ZONE = """\
; Stalwart's zone for example.org
example.org. 3600 IN MX 10 mail.example.org.
example.org. 3600 IN TXT "v=spf1 mx ra=postmaster -all"
202612r._domainkey.example.org. 3600 IN TXT "v=DKIM1; k=rsa; h=sha256; p=AAAA" "BBBB"
_dmarc.example.org. 3600 IN TXT "v=DMARC1; p=reject; rua=mailto:postmaster@example.org"
"""


def test_a_zone_file_parses_into_records_with_split_txt_strings_joined() -> None:
    records = parse_zone(ZONE)
    assert [(r.type, r.name) for r in records] == [
        ("MX", "example.org"), ("TXT", "example.org"),
        ("TXT", "202612r._domainkey.example.org"), ("TXT", "_dmarc.example.org"),
    ]  # fmt: skip
    assert records[0].content == "10 mail.example.org."
    assert records[2].content == "v=DKIM1; k=rsa; h=sha256; p=AAAABBBB"


def test_mail_records_publish_mx_spf_dkim_and_dmarc_at_p_none() -> None:
    keys = DomainKeys([DkimKey("202612r", "rsa", "K" * 392)], parse_zone(ZONE))
    records = mail_records("example.org", keys)
    by_name = {(r["type"], r["name"]): r for r in records}
    assert by_name[("MX", "@")]["value"] == "mail.example.org"
    assert by_name[("MX", "@")]["priority"] == 10
    assert by_name[("TXT", "@")]["value"] == "v=spf1 mx ra=postmaster -all"
    dkim = by_name[("TXT", "202612r._domainkey")]["value"]
    assert dkim.startswith("v=DKIM1; k=rsa;") and dkim.endswith("p=" + "K" * 392)
    # Stalwart asks for p=reject; a new domain starts at p=none.
    assert by_name[("TXT", "_dmarc")]["value"].startswith("v=DMARC1; p=none;")
    assert len(records) == 4
