"""The SIP grammar of the packet layer: every regular expression, beside its ABNF.

Private to :mod:`netsip.packet` and :mod:`netsip.framing` (and the response
cache's To-tag handling); modelled on h11's ``_abnf.py``. Each pattern is
written once, under the RFC 3261 section 25 rules it implements (or the
section that sets the rule), and every module that needs it imports it
from here. Patterns are built from ``str`` pieces named after the ABNF
rules and compiled once at import.

Where a pattern differs from the ABNF on purpose the comment says so;
the overall stance is Net::SIP's: accept what a real peer sends when it is
unambiguous (non-ASCII display names, any bytes in a reason phrase,
optional blanks around ``;`` and ``=``), refuse what could be read in two
ways (unbalanced quotes or ``<>``, control characters, URI headers in a
Request-URI). Folded lines are unfolded before these patterns see a value
(RFC 3261 7.3.1), so ``LWS`` shrinks to ``[ \\t]``.

Differences from Net::SIP: Net::SIP checks these rules with ad-hoc code
spread over ``Net::SIP::Packet`` and ``Net::SIP::Util``; here they are
one table of patterns, stricter where the RFC is (Via, addresses, CSeq).
"""

from __future__ import annotations

import re

__all__ = [
    "ADDR_RE",
    "BALANCED_RE",
    "CALLID_LINE_RE",
    "CALLID_RE",
    "CONTENT_LENGTH_LINE_RE",
    "CRLF",
    "CSEQ_RE",
    "ELEM_RE",
    "FOLD_RE",
    "HEADER_END",
    "HEADER_END_ANY_RE",
    "LAST_PARAM_RE",
    "NAME_ADDR_TAG_RE",
    "REQUEST_LINE_RE",
    "SCHEME_RE",
    "STATUS_LINE_RE",
    "TAG_PARAM_RE",
    "TAG_VALUE_RE",
    "TOKEN_RE",
    "URI_RE",
    "VIA_RE",
]

# ---------------------------------------------------------------------------
# message framing (RFC 3261 7)

#   Request   =  Request-Line *( message-header ) CRLF [ message-body ]
#   Response  =  Status-Line *( message-header ) CRLF [ message-body ]
#   CRLF      =  CR LF
# The header block ends with the empty line: the CRLF of the last header
# line, then the CRLF of the empty one.
CRLF = b"\r\n"
HEADER_END = b"\r\n\r\n"
# Net::SIP also takes bare LFs as line ends (RFC 3261 7 asks for CRLF; a
# datagram holds one message, so tolerance is safe there): the first empty
# line in any spelling.
HEADER_END_ANY_RE = re.compile(rb"\r?\n\r?\n")

# ---------------------------------------------------------------------------
# basic rules (RFC 3261 25.1)

#   token  =  1*(alphanum / "-" / "." / "!" / "%" / "*"
#                / "_" / "+" / "`" / "'" / "~" )
TOKEN_CHARS = r"A-Za-z0-9\-.!%*_+`'~"
TOKEN = rf"[{TOKEN_CHARS}]+"
# header names (header-name = token) and methods (extension-method = token)
TOKEN_RE = re.compile(TOKEN)

#   word  =  1*(alphanum / "-" / "." / "!" / "%" / "*" /
#               "_" / "+" / "`" / "'" / "~" /
#               "(" / ")" / "<" / ">" /
#               ":" / "\" / DQUOTE /
#               "/" / "[" / "]" / "?" /
#               "{" / "}" )
WORD = r"[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+"

#   quoted-string  =  SWS DQUOTE *(qdtext / quoted-pair ) DQUOTE
#   qdtext         =  LWS / %x21 / %x23-5B / %x5D-7E / UTF8-NONASCII
#   quoted-pair    =  "\" (%x00-09 / %x0B-0C / %x0E-7F)
# (SWS is left to the enclosing rule; no line breaks: values are unfolded)
QUOTED_STRING = r'"(?:[^"\\\r\n]|\\[^\r\n])*+"'

#   generic-param  =  token [ EQUAL gen-value ]
#   gen-value      =  token / host / quoted-string
#   SEMI = SWS ";" SWS      EQUAL = SWS "=" SWS
# One parameter with its leading SEMI. gen-value is taken wider than token /
# host (anything up to a separator), as Net::SIP does.
PARAM = rf"(?:[ \t]*;[ \t]*{TOKEN}(?:[ \t]*=[ \t]*(?:{QUOTED_STRING}|[^\s;,\"<>=]+))?)"

# The plain last parameter of a Via or From/To line (";branch=...",
# ";tag=..."): a generic-param with a token-like value, no blanks, no quotes.
# The parser's prefix cache relies on it: see netsip._parser.
LAST_PARAM_RE = re.compile(rf';{TOKEN}=[^\s;,"<>=]+')

# ---------------------------------------------------------------------------
# start lines (RFC 3261 25.1)

#   SIP-Version  =  "SIP" "/" 1*DIGIT "." 1*DIGIT
# only 2.0 is spoken; the name is case-insensitive (RFC 3261 7.1)
SIP_VERSION = r"[Ss][Ii][Pp]/2\.0"

#   absoluteURI  =  scheme ":" ( hier-part / opaque-part )
#   scheme       =  ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
SCHEME = r"[A-Za-z][A-Za-z0-9+\-.]*"
SCHEME_RE = re.compile(rf"{SCHEME}:")

#   Request-URI  =  SIP-URI / SIPS-URI / absoluteURI
# Checked loosely (no blanks or control characters; a scheme is checked
# apart): a proxy forwards URIs it does not understand.
URI = r"[^\s\x00-\x1f\x7f]+"
URI_RE = re.compile(URI)

#   Request-Line  =  Method SP Request-URI SP SIP-Version CRLF
#   Method        =  INVITEm / ACKm / OPTIONSm / BYEm / CANCELm / REGISTERm
#                    / extension-method
#   extension-method  =  token
# groups: method, Request-URI, version
REQUEST_LINE_RE = re.compile(rf"({TOKEN}) ({URI}) ({SIP_VERSION})")

#   Status-Line     =  SIP-Version SP Status-Code SP Reason-Phrase CRLF
#   extension-code  =  3DIGIT
#   Reason-Phrase   =  *(reserved / unreserved / escaped
#                      / UTF8-NONASCII / UTF8-CONT / SP / HTAB)
# The codes are 100-699 (RFC 3261 7.2, 21). Any text but control characters
# is taken as the phrase, and a missing "SP Reason-Phrase" too (Net::SIP).
# groups: code, phrase (None if absent)
STATUS_LINE_RE = re.compile(rf"{SIP_VERSION} ([1-6][0-9][0-9])(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?")

# ---------------------------------------------------------------------------
# header values (RFC 3261 25.1)

#   Call-ID  =  ( "Call-ID" / "i" ) HCOLON callid
#   callid   =  word [ "@" word ]
#   HCOLON   =  *( SP / HTAB ) ":" SWS
CALLID = rf"{WORD}(?:@{WORD})?"
CALLID_RE = re.compile(CALLID)
# A whole Call-ID line, value in group 1: the one line unique to every call,
# so it is never in the parser's line cache and one match does what the
# general path does in steps. ASCII classes rather than IGNORECASE: that
# would also let U+0130/U+0131 stand for "i".
CALLID_LINE_RE = re.compile(rf"(?:[Cc][Aa][Ll][Ll]-[Ii][Dd]|[Ii])[ \t]*:[ \t]*({CALLID})[ \t]*")

#   CSeq  =  "CSeq" HCOLON 1*DIGIT LWS Method
# groups: number, method
CSEQ_RE = re.compile(rf"([0-9]+)[ \t]+({TOKEN})")

#   display-name  =  *(token LWS) / quoted-string
# Unquoted names are taken wider than tokens (non-ASCII, other harmless
# characters), but never with what would make element boundaries ambiguous:
# comma, semicolon, quote, angle brackets, backslash.
DISPLAY_NAME = r'(?:[^\s"<>,;\\]++(?:[ \t]+[^\s"<>,;\\]++)*+)'

#   name-addr  =  [ display-name ] LAQUOT addr-spec RAQUOT
#   LAQUOT     =  SWS "<"       RAQUOT  =  ">" SWS
NAME_ADDR = rf"(?:{QUOTED_STRING}|{DISPLAY_NAME})?[ \t]*<[^\s<>]+>"

#   addr-spec  =  SIP-URI / SIPS-URI / absoluteURI
# Without angle brackets a URI ends before the first ';' ',' or '?': what
# follows is a header parameter (RFC 3261 20.10).
ADDR_SPEC = rf"{SCHEME}:[^\s;,?<>\"]+"

#   From           =  ( "From" / "f" ) HCOLON from-spec
#   from-spec      =  ( name-addr / addr-spec ) *( SEMI from-param )
#   To             =  ( "To" / "t" ) HCOLON ( name-addr / addr-spec )
#                     *( SEMI to-param )
#   contact-param  =  (name-addr / addr-spec) *(SEMI contact-params)
#   route-param    =  name-addr *( SEMI rr-param )
# One address of From, To, Contact, Route, Record-Route and the like (a
# Route's addr-spec is tolerated, as Net::SIP does); Contact's STAR apart.
ADDR_RE = re.compile(rf"(?:{NAME_ADDR}|{ADDR_SPEC}){PARAM}*+")

#   via-parm       =  sent-protocol LWS sent-by *( SEMI via-params )
#   sent-protocol  =  protocol-name SLASH protocol-version SLASH transport
#   protocol-name  =  "SIP" / token       transport = "UDP" / ... / token
#   SLASH          =  SWS "/" SWS
#   sent-by        =  host [ COLON port ]
#   host           =  hostname / IPv4address / IPv6reference
#   COLON          =  SWS ":" SWS
SENT_PROTOCOL = rf"{TOKEN}[ \t]*/[ \t]*{TOKEN}[ \t]*/[ \t]*{TOKEN}"
SENT_BY = r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._]+)(?:[ \t]*:[ \t]*[0-9]{1,5})?"
VIA_RE = re.compile(rf"{SENT_PROTOCOL}[ \t]+{SENT_BY}{PARAM}*+")

#   tag-param  =  "tag" EQUAL token
# The To/From tag as a header parameter (RFC 3261 19.3), in the one
# spelling used wherever a tag is looked for or removed: any case, optional
# blanks around ';' and '=' (SEMI, EQUAL), the value up to the next
# separator; '>' ends it too, so it never reaches into a name-addr's URI.
# (ASCII classes rather than IGNORECASE: the same strings, matched faster)
TAG_PARAM = r";[ \t]*[Tt][Aa][Gg][ \t]*=[ \t]*[^;, \t>]*"
# search: is there a tag among these parameters; sub: remove it
TAG_PARAM_RE = re.compile(TAG_PARAM)
# the same, with the tag's value as group 1 (a dialog's local and remote tags)
TAG_VALUE_RE = re.compile(r";[ \t]*[Tt][Aa][Gg][ \t]*=[ \t]*([^;, \t>]*)")
# a name-addr followed by its tag and nothing else (the To of a response):
# group 1 is up to the last '>'
NAME_ADDR_TAG_RE = re.compile(rf"(.*>){TAG_PARAM}", re.DOTALL)

#   Content-Length  =  ( "Content-Length" / "l" ) HCOLON 1*DIGIT
# For the stream framer, on raw bytes: the header at the start of a line, its
# value (group 1) up to the end of the field including folded continuation
# lines (RFC 3261 7.3.1), checked by the caller.
CONTENT_LENGTH_LINE_RE = re.compile(
    rb"\n(?:content-length|l)[ \t]*:((?:[^\r\n]|\r\n[ \t])*)", re.IGNORECASE
)

# ---------------------------------------------------------------------------
# lists (RFC 3261 7.3.1)

#   header  =  "header" HCOLON header-value *(COMMA header-value)
#   COMMA   =  SWS "," SWS
# Header fields whose values are comma separated lists may be combined into
# one line, so an element ends at a comma, except one inside a
# quoted-string, inside <...> (a URI may hold commas) or escaped by '\'.
# ELEM_RE matches one element (Net::SIP's _hdrkey_parse_comma_seperated);
# BALANCED_RE a whole value whose quotes and <> are all closed.
ELEM_RE = re.compile(r'(?:"(?:[^"\\]|\\.)*+"|<(?:[^>\\]|\\.)*+>|\\.|[^",<\\]++)*+', re.S)
BALANCED_RE = re.compile(r'(?:"(?:[^"\\]|\\.)*+"|<(?:[^>\\]|\\.)*+>|\\.|[^"<\\]++)*+', re.S)

#   LWS  =  [*WSP CRLF] 1*WSP ; linear whitespace
# A line break in a value given by a user, with the blanks after it: folding
# is equivalent to one SP (RFC 3261 7.3.1), and a bare CR is no line end.
FOLD_RE = re.compile(r"\r?\n[ \t]*|\r")
