#!/usr/bin/env python3
"""Writes a tiny MaxMind (mmdb) GeoIP database for tests: each given network maps to a
continent and a country, in the layout of MaxMind's GeoIP2/GeoLite2-City databases
(`continent.code`, `country.iso_code`), which is what PowerDNS's geoip backend reads for
the LUA functions `continent()` and `country()`.

    make-test-mmdb.py OUT.mmdb 127.0.0.2/32=EU:DE 127.0.0.3/32=AS:JP ...

Needs PyPI `mmdb-writer` and `netaddr`; scripts/setup.sh installs them (pinned) into the venv
~/.cache/afreg/py, so run it as ~/.cache/afreg/py/bin/python3 scripts/make-test-mmdb.py.
"""

import sys

from mmdb_writer import MMDBWriter
from netaddr import IPSet

CONTINENTS = {"AF", "AN", "AS", "EU", "NA", "OC", "SA"}


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    out = argv[1]
    # An IPv6 database with IPv4 mapped in (::a.b.c.d/96+n), as MaxMind ships theirs.
    db = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-City",
                    languages=["en"], description="afreg test GeoIP database")
    for spec in argv[2:]:
        try:
            net, geo = spec.split("=", 1)
            continent, country = geo.split(":", 1)
        except ValueError:
            print(f"bad mapping {spec!r}: want CIDR=CONTINENT:COUNTRY", file=sys.stderr)
            return 2
        if continent not in CONTINENTS or len(country) != 2:
            print(f"bad mapping {spec!r}: continent one of {sorted(CONTINENTS)}, country ISO 3166 alpha-2",
                  file=sys.stderr)
            return 2
        db.insert_network(IPSet([net]), {
            "continent": {"code": continent},
            "country": {"iso_code": country},
        })
    db.to_db_file(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
