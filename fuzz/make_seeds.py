#!/usr/bin/env python3
"""Writes the hand-made seed inputs of every fuzz target into corpus/<target>/seed-*.

The seeds follow real traffic and files: what psql, libpq, the mariadb client and
mysql_async send, certificates and CSRs shaped like dbward's, resource files in dbward
and Teleport form, API bodies as the dbward client sends them. Run from fuzz/; needs
Python 3 with the `cryptography` package. `cargo fuzz cmin` then keeps what adds coverage.
"""
import datetime
import json
import os
import re
import ssl
import struct

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID, ExtendedKeyUsageOID

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def write(target, name, data):
    directory = os.path.join(HERE, "corpus", target)
    os.makedirs(directory, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(directory, "seed-" + name), "wb") as f:
        f.write(data)


# ---- PostgreSQL ---------------------------------------------------------------------------

def pg_packet(body):
    return struct.pack(">i", len(body) + 4) + body


def pg_startup_body(params, minor=0):
    body = struct.pack(">i", (3 << 16) | minor)
    for k, v in params:
        body += k.encode() + b"\0" + v.encode() + b"\0"
    return body + b"\0"


def pg_msg(tag, body):
    return tag + struct.pack(">i", len(body) + 4) + body


def client_hello(alpn):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


SSL_REQUEST = pg_packet(struct.pack(">i", 80877103))
GSSENC_REQUEST = pg_packet(struct.pack(">i", 80877104))
CANCEL = pg_packet(struct.pack(">iii", 80877102, 4242, -7))
PSQL = [("user", "alice"), ("database", "postgres"), ("application_name", "psql"),
        ("client_encoding", "UTF8")]
JDBC = [("user", "app"), ("database", "shop"), ("client_encoding", "UTF8"),
        ("DateStyle", "ISO"), ("TimeZone", "UTC"), ("extra_float_digits", "2"),
        ("options", "-c search_path=sales,public -c statement_timeout=5000")]
EXT = [("user", "alice"), ("database", "app"), ("_pq_.command_marker", "1"),
       ("replication", "false")]

write("pg_startup", "ssl_request", SSL_REQUEST)
write("pg_startup", "ssl_request_then_hello", SSL_REQUEST + client_hello(None))
write("pg_startup", "gssenc_then_ssl", GSSENC_REQUEST + SSL_REQUEST + client_hello(None))
write("pg_startup", "cancel", CANCEL)
write("pg_startup", "cancel_body", CANCEL[4:])
write("pg_startup", "direct_tls", client_hello(["postgresql"]))
write("pg_startup", "plaintext_psql", pg_packet(pg_startup_body(PSQL)))
write("pg_startup", "plaintext_jdbc", pg_packet(pg_startup_body(JDBC)))
write("pg_startup", "protocol_3_2_extensions", pg_packet(pg_startup_body(EXT, minor=2)))
write("pg_startup", "body_psql", pg_startup_body(PSQL))
write("pg_startup", "body_jdbc", pg_startup_body(JDBC))
write("pg_startup", "body_extensions", pg_startup_body(EXT, minor=2))
write("pg_startup", "protocol_2", pg_packet(struct.pack(">i", 2 << 16) + b"alice\0"))
write("pg_startup", "http", b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")

QUERY = pg_msg(b"Q", b"select 1\0")
PARSE = pg_msg(b"P", b"s1\0select * from orders where id = $1\0" + struct.pack(">hi", 1, 23))
BIND = pg_msg(b"B", b"\0s1\0" + struct.pack(">hh", 0, 1) + struct.pack(">i", 2) + b"42"
              + struct.pack(">h", 0))
DESCRIBE = pg_msg(b"D", b"P\0")
EXECUTE = pg_msg(b"E", b"\0" + struct.pack(">i", 0))
SYNC = pg_msg(b"S", b"")
TERMINATE = pg_msg(b"X", b"")
COPY = pg_msg(b"d", b"1\talice\n") + pg_msg(b"c", b"")
PASSWORD = pg_msg(b"p", b"secret\0")
SASL = pg_msg(b"p", b"SCRAM-SHA-256\0" + struct.pack(">i", 32) + b"n,,n=,r=rOprNGfwEbeRWgbNEkqO%hvYD")
ERROR = pg_msg(b"E", b"SERROR\0VERROR\0C42P01\0Mrelation \"x\" does not exist\0P15\0\0")
NOTICE = pg_msg(b"N", b"SNOTICE\0C00000\0Mhello\0\0")
SIMPLE = QUERY + pg_msg(b"Q", b"begin; update t set x = 1; commit;\0") + TERMINATE
EXTENDED = PARSE + BIND + DESCRIBE + EXECUTE + SYNC + pg_msg(b"C", b"s1\0") + SYNC

write("pg_messages", "simple", SIMPLE)
write("pg_messages", "extended", EXTENDED)
write("pg_messages", "copy", pg_msg(b"Q", b"copy t from stdin\0") + COPY)
write("pg_messages", "auth", PASSWORD + SASL)
write("pg_messages", "error_notice", ERROR + NOTICE)

for seed, name, stream in [(0, "simple", SIMPLE), (7, "extended", EXTENDED),
                           (200, "copy", pg_msg(b"Q", b"copy t from stdin\0") + COPY + QUERY),
                           (33, "long_query", pg_msg(b"Q", b"select '" + b"x" * 300 + b"'\0")),
                           (99, "unnamed_parse", pg_msg(b"P", b"\0select now()\0\0\0") + SYNC),
                           (1, "bad_length", QUERY + b"Q\0\0\0\2")]:
    write("pg_relay_tap", name, bytes([seed]) + stream)

# ---- MySQL --------------------------------------------------------------------------------

CAP = {"LONG_PASSWORD": 1, "FOUND_ROWS": 2, "LONG_FLAG": 4, "CONNECT_WITH_DB": 8,
       "LOCAL_FILES": 1 << 7, "PROTOCOL_41": 1 << 9, "INTERACTIVE": 1 << 10, "SSL": 1 << 11,
       "TRANSACTIONS": 1 << 13, "SECURE_CONNECTION": 1 << 15, "MULTI_STATEMENTS": 1 << 16,
       "MULTI_RESULTS": 1 << 17, "PS_MULTI_RESULTS": 1 << 18, "PLUGIN_AUTH": 1 << 19,
       "CONNECT_ATTRS": 1 << 20, "LENENC": 1 << 21, "SESSION_TRACK": 1 << 23,
       "DEPRECATE_EOF": 1 << 24}


def caps(*names):
    value = 0
    for n in names:
        value |= CAP[n]
    return value


def my_packet(seq, payload):
    return struct.pack("<I", len(payload))[:3] + bytes([seq]) + payload


def lenenc(n):
    if n < 251:
        return bytes([n])
    if n < 1 << 16:
        return b"\xfc" + struct.pack("<H", n)
    if n < 1 << 24:
        return b"\xfd" + struct.pack("<I", n)[:3]
    return b"\xfe" + struct.pack("<Q", n)


def lenenc_str(s):
    return lenenc(len(s)) + s


def handshake_response(capabilities, user, auth, db=None, plugin=None, attrs=None):
    out = struct.pack("<IIB", capabilities, 16 << 20, 45) + b"\0" * 23
    out += user + b"\0"
    if capabilities & CAP["LENENC"]:
        out += lenenc_str(auth)
    else:
        out += bytes([len(auth)]) + auth
    if db is not None:
        out += db + b"\0"
    if plugin is not None:
        out += plugin + b"\0"
    if attrs is not None:
        blob = b"".join(lenenc_str(k) + lenenc_str(v) for k, v in attrs)
        out += lenenc_str(blob)
    return out


BASE = caps("LONG_PASSWORD", "LONG_FLAG", "PROTOCOL_41", "TRANSACTIONS", "SECURE_CONNECTION",
            "MULTI_STATEMENTS", "MULTI_RESULTS", "PS_MULTI_RESULTS", "PLUGIN_AUTH",
            "DEPRECATE_EOF", "SESSION_TRACK", "LOCAL_FILES", "INTERACTIVE")
SCRAMBLE = bytes(range(1, 21))
SSL_PAYLOAD = struct.pack("<IIB", BASE | CAP["SSL"], 16 << 20, 45) + b"\0" * 23
MARIADB_ATTRS = [(b"_client_name", b"libmariadb"), (b"_client_version", b"3.3.8"),
                 (b"_os", b"Linux"), (b"_pid", b"4242"), (b"_platform", b"x86_64"),
                 (b"_server_host", b"127.0.0.1"), (b"program_name", b"mariadb")]
FULL = handshake_response(BASE | caps("SSL", "CONNECT_WITH_DB", "CONNECT_ATTRS", "LENENC"),
                          b"alice", SCRAMBLE, b"shop", b"mysql_native_password", MARIADB_ATTRS)
PLAIN = handshake_response(BASE | CAP["CONNECT_WITH_DB"], b"root", b"", b"mysql",
                           b"mysql_native_password")
ASYNC = handshake_response(BASE | caps("SSL", "CONNECT_ATTRS"), b"app", b"",
                           None, b"caching_sha2_password", [(b"_client_name", b"mysql_async")])
GREETING = (b"\x0a" + b"5.5.5-10.11.6-MariaDB-0+deb12u1\0" + struct.pack("<I", 7) + SCRAMBLE[:8]
            + b"\0" + struct.pack("<HBHH", 0xf7fe, 45, 2, 0x81bf) + bytes([21]) + b"\0" * 10
            + SCRAMBLE[8:] + b"\0" + b"mysql_native_password\0")
ERR = b"\xff" + struct.pack("<H", 1045) + b"#28000Access denied for user 'x'@'h'"
AUTH_SWITCH = b"\xfe" + b"mysql_native_password\0" + SCRAMBLE + b"\0"
OK = b"\x00\x00\x00\x02\x00\x00\x00"

write("mysql_handshake", "ssl_request_then_hello", my_packet(1, SSL_PAYLOAD) + client_hello(None))
write("mysql_handshake", "plaintext_response", my_packet(1, PLAIN))
write("mysql_handshake", "response_with_attrs", my_packet(2, FULL))
write("mysql_handshake", "response_mysql_async", my_packet(2, ASYNC))
write("mysql_handshake", "response_without_db_or_attrs",
      my_packet(2, handshake_response(BASE | CAP["SSL"], b"bob", SCRAMBLE)))
write("mysql_handshake", "greeting_err_switch_ok",
      my_packet(0, GREETING) + my_packet(2, ERR) + my_packet(2, AUTH_SWITCH) + my_packet(3, OK))

COM_QUERY = my_packet(0, b"\x03select @@version_comment limit 1")
COM_PREPARE = my_packet(0, b"\x16select * from orders where id = ?")
COM_EXECUTE = my_packet(0, b"\x17" + struct.pack("<IBI", 1, 0, 1) + b"\x01\x01\x08\x00" + struct.pack("<Q", 42))
COM_CHANGE_USER = my_packet(0, b"\x11bob\0" + bytes([20]) + SCRAMBLE + b"shop\0" + struct.pack("<H", 45)
                            + b"mysql_native_password\0" + lenenc_str(b"\x0c_client_name\x0alibmariadb"))
AUTH_REPLY = my_packet(3, SCRAMBLE)
LOAD_DATA = (my_packet(0, b"\x03load data local infile 'x.csv' into table t")
             + my_packet(2, b"1,alice\n2,bob\n") + my_packet(3, b""))
COM_QUIT = my_packet(0, b"\x01")
COM_PING = my_packet(0, b"\x0e")
COM_INIT_DB = my_packet(0, b"\x02shop")

for seed, name, stream in [
        (0, "session", COM_QUERY + COM_INIT_DB + COM_PING + COM_QUIT),
        (5, "prepared", COM_PREPARE + COM_EXECUTE + my_packet(0, b"\x19\x01\x00\x00\x00")),
        (77, "change_user", COM_CHANGE_USER + AUTH_REPLY + COM_QUERY),
        (150, "load_data", LOAD_DATA + COM_QUERY),
        (9, "long_query", my_packet(0, b"\x03select '" + b"y" * 400 + b"'")),
        (250, "empty_packets", my_packet(0, b"") + my_packet(1, b"\x03not a command") + COM_QUIT)]:
    write("mysql_relay_tap", name, bytes([seed]) + stream)

# ---- certificates and CSRs ----------------------------------------------------------------

NOW = datetime.datetime(2026, 6, 1, tzinfo=datetime.timezone.utc)
IDENTITY_OID = x509.ObjectIdentifier("1.3.6.1.4.1.59934.1.1")


def der_utf8(data):
    n = len(data)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return b"\x0c" + length + data


def name(cn, org=None):
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


ca_key = ec.generate_private_key(ec.SECP256R1())
ca_cert = (x509.CertificateBuilder().subject_name(name("dbward user CA", "fuzz"))
           .issuer_name(name("dbward user CA", "fuzz")).public_key(ca_key.public_key())
           .serial_number(x509.random_serial_number())
           .not_valid_before(NOW - datetime.timedelta(days=1))
           .not_valid_after(NOW + datetime.timedelta(days=3650))
           .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
           .sign(ca_key, hashes.SHA256()))


def user_cert(payload, cn="alice", key=None):
    key = key or ec.generate_private_key(ec.SECP256R1())
    expires = NOW + datetime.timedelta(hours=8)
    payload = dict(payload, exp=int(expires.timestamp()))
    builder = (x509.CertificateBuilder().subject_name(name(cn, "fuzz")).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(NOW - datetime.timedelta(minutes=5)).not_valid_after(expires)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
               .add_extension(x509.UnrecognizedExtension(
                   IDENTITY_OID, der_utf8(json.dumps(payload, separators=(",", ":")).encode())),
                   critical=False))
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


LOGIN = {"v": 1, "user": "alice", "cluster": "fuzz", "usage": "login"}
DB = {"v": 1, "user": "alice", "cluster": "fuzz", "usage": "db",
      "route": {"service": "orders", "db_user": "alice", "db_name": "shop",
                "db_roles": ["reader", "writer"]}}
CA_DER = ca_cert.public_bytes(serialization.Encoding.DER)
write("pki_identity", "login_cert", user_cert(LOGIN))
write("pki_identity", "db_cert_chain", user_cert(DB) + CA_DER)
write("pki_identity", "future_version", user_cert(dict(LOGIN, v=2)))
write("pki_identity", "ca_only", CA_DER)

ec_key = ec.generate_private_key(ec.SECP256R1())
rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def csr(key, cn):
    return (x509.CertificateSigningRequestBuilder().subject_name(name(cn))
            .sign(key, hashes.SHA256()))


EC_CSR = csr(ec_key, "alice")
RSA_CSR = csr(rsa_key, "bob")
write("pki_csr", "ec_der", EC_CSR.public_bytes(serialization.Encoding.DER))
write("pki_csr", "rsa_der", RSA_CSR.public_bytes(serialization.Encoding.DER))
write("pki_csr", "ec_pem", EC_CSR.public_bytes(serialization.Encoding.PEM))
CSR_PEM = EC_CSR.public_bytes(serialization.Encoding.PEM).decode()

# ---- resources and configuration ----------------------------------------------------------

with open(os.path.join(ROOT, "crates/model/src/resource.rs")) as f:
    source = f.read()
for i, text in enumerate(re.findall(r'r#"(kind: .*?)"#', source, re.S)):
    write("model_resources", f"model_test_{i}", text)
with open(os.path.join(ROOT, "examples/resources.yaml")) as f:
    EXAMPLE = f.read()
write("model_resources", "example", EXAMPLE)
write("model_resources", "teleport_db", "kind: db\nversion: v3\nmetadata:\n  name: rds\n  expires: 2030-01-01T00:00:00Z\n  labels:\n    teleport.dev/db-admin: teleport-admin\nspec:\n  protocol: mysql\n  uri: rds.example.com:3306\n  aws:\n    region: us-east-1\n  dynamic_labels:\n    hostname: {command: [hostname], period: 1m}\n  tls:\n    mode: verify-ca\n    ca_cert: /etc/ca.pem\n    trust_system_cert_pool: true\n")
write("model_resources", "teleport_user", "kind: user\nmetadata:\n  name: alice\n  revision: 1b2c\nspec:\n  created_by:\n    time: \"2024-01-01T00:00:00Z\"\n    user: {name: admin}\n  expires: \"0001-01-01T00:00:00Z\"\n  roles:\n  - access\n  - auto-db-users\n  status:\n    is_locked: false\n  traits:\n    db_roles: [reader]\n    logins: [alice]\nversion: v2\n")
write("model_resources", "json_array", json.dumps([
    {"kind": "user", "version": "v2", "metadata": {"name": "bob"},
     "spec": {"roles": ["dev"], "traits": {"db_users": ["app"]}}},
    {"kind": "db", "version": "v3", "metadata": {"name": "m", "labels": {"env": "dev"}},
     "spec": {"protocol": "mysql", "uri": "127.0.0.1:3306"}}], indent=2))
write("model_resources", "yaml_list", "- kind: role\n  version: v7\n  metadata: {name: r}\n  spec:\n    allow:\n      db_labels: {env: ['^dev|staging$', qa]}\n      db_names: ['*']\n      db_users: [alice]\n    options: {max_session_ttl: 1h30m}\n- kind: user\n  version: v2\n  metadata: {name: u, labels: {team: a}}\n  spec: {roles: [r]}\n")
write("model_resources", "stored_json", json.dumps(
    {"kind": "role", "version": "v7", "metadata": {"name": "x", "description": "d"},
     "spec": {"allow": {"db_labels": {"*": "*"}, "db_roles": ["reader"]},
              "deny": {}, "options": {"create_db_user_mode": "best_effort_drop"}}}))

with open(os.path.join(ROOT, "examples/dbward.yaml")) as f:
    write("model_config", "example", f.read())
with open("/work/shared/DESIGN.md" if os.path.exists("/work/shared/DESIGN.md") else os.devnull) as f:
    design = f.read()
match = re.search(r"```yaml\n(version: v1\n.*?)```", design, re.S)
if match:
    write("model_config", "design", match.group(1))
write("model_config", "postgres_store", "version: v1\nstorage:\n  backend: postgres\n  dsn: \"postgres://dbward@db1:5432/dbward\"\ndatabases:\n  - {name: a, protocol: mysql, uri: h:3306, admin_user: {name: root, default_database: x}}\n  - name: b\n    protocol: postgres\n    uri: '[::1]:5432'\n    tls: {mode: insecure}\n")

# ---- API bodies ---------------------------------------------------------------------------

write("api_body", "login", json.dumps({"user": "alice", "password": "correct horse",
                                       "csr_pem": CSR_PEM, "ttl_secs": 3600}))
write("api_body", "db_cert", json.dumps({"db": "orders", "db_user": "alice", "db_name": "shop",
                                         "db_roles": ["reader"], "csr_pem": CSR_PEM}))
write("api_body", "create", json.dumps({"file_name": "resources.yaml", "text": EXAMPLE,
                                        "force": True}))
write("api_body", "add_user", json.dumps({"name": "carol", "roles": ["auto-db-users"],
                                          "traits": {"db_roles": ["writer"]}, "password": "pw"}))
write("api_body", "audit_json", json.dumps({"event_type": "db.session.start", "user": "alice",
                                            "since_secs": 3600, "limit": 50}))
write("api_body", "audit_query", "event_type=db.session.start&user=alice&since_secs=3600&limit=50")
