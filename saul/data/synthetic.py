"""A deterministic, synthetic legal-style corpus written by our own code (no downloads).

Three kinds of documents, in the shapes legal text really has, so that the tokenizer and the
packer meet the same structure as on real data (SaulLM's corpus is contracts, legislation and
case law):
  contract  parties, recitals, numbered clauses 1. / 1.1 / (a), definitions, governing law
  statute   title and chapter headings, sections (§ 17-401), subsections (a)(1)
  opinion   caption, docket, headed parts, case and statute citations, ¶-numbered paragraphs
About 10% of documents are "long" (several times more clauses, sections or paragraphs): at
the demo sequence length they span many samples, so the packer's chunking is always exercised.

Each document draws from its own random stream seeded by (seed, index): the output depends only
on the seed, document i is the same whatever num_documents is, and string seeding of
`random.Random` is stable across processes and Python versions (it hashes with SHA-512).
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, List

from saul.data.atomic import write_text_atomic

# Bump whenever the generated text changes: `prepare` keys its idempotency on it.
GENERATOR_VERSION = 1
KINDS = ("contract", "statute", "opinion")
_KIND_WEIGHTS = (0.4, 0.3, 0.3)
_LONG_FRACTION = 0.1


@dataclass(frozen=True)
class LegalDocument:
    id: str
    kind: str
    text: str


# --------------------------------------------------------------------------------------------
# Vocabulary pools
# --------------------------------------------------------------------------------------------
_FIRST = ("John", "Mary", "Robert", "Patricia", "Michael", "Linda", "David", "Elizabeth",
          "James", "Susan", "Thomas", "Margaret", "Daniel", "Sarah", "Paul", "Karen", "Mark",
          "Nancy", "Steven", "Lisa", "Andrew", "Emily", "Kevin", "Laura", "Brian", "Anne",
          "Claire", "Louis", "Hélène", "José", "Sofía", "Zoë", "Søren", "François")
_LAST = ("Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis",
         "Rodriguez", "Martinez", "Hernandez", "Lopez", "Wilson", "Anderson", "Thomas",
         "Taylor", "Moore", "Jackson", "Martin", "Lee", "Thompson", "White", "Harris", "Clark",
         "Lewis", "Robinson", "Walker", "Young", "Allen", "King", "Wright", "Scott", "Green",
         "Baker", "Adams", "Nelson", "Hill", "Campbell", "Mitchell", "Roberts", "Carter",
         "O'Connor", "McAllister", "Dubois", "Müller", "Novak", "Okafor", "Nakamura")
_COMPANY_STEMS = ("Acme", "Blue River", "Northwind", "Granite", "Pinnacle", "Silverline",
                  "Harborview", "Redwood", "Summit", "Keystone", "Meridian", "Oakridge",
                  "Lighthouse", "Ironbridge", "Evergreen", "Crescent", "Atlas", "Beacon",
                  "Cobalt", "Sterling", "Westgate", "Falcon", "Juniper", "Horizon")
_COMPANY_TRADES = ("Holdings", "Technologies", "Logistics", "Capital", "Pharmaceuticals",
                   "Energy", "Software", "Manufacturing", "Partners", "Biosciences", "Foods",
                   "Realty", "Insurance", "Systems", "Media", "Freight")
_COMPANY_FORMS = (("Inc.", "corporation"), ("LLC", "limited liability company"),
                  ("Corp.", "corporation"), ("L.P.", "limited partnership"),
                  ("Ltd.", "private limited company"), ("Co.", "corporation"))
_STATES = ("Delaware", "New York", "California", "Texas", "Illinois", "Massachusetts",
           "Washington", "Florida", "Georgia", "Ohio", "Pennsylvania", "New Jersey",
           "Colorado", "Oregon", "Virginia", "Michigan")
_CITIES = ("Wilmington", "New York", "San Francisco", "Austin", "Chicago", "Boston",
           "Seattle", "Miami", "Atlanta", "Columbus", "Philadelphia", "Newark", "Denver",
           "Portland", "Richmond", "Detroit")
_STREETS = ("Main Street", "Market Street", "Broadway", "Elm Avenue", "Park Avenue",
            "Commerce Drive", "Harbor Boulevard", "Lexington Avenue", "Water Street")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")
_SIGNATORY_TITLES = ("Chief Executive Officer", "General Counsel", "President",
                     "Managing Director", "Chief Financial Officer")

_AGREEMENTS = ("MASTER SERVICES AGREEMENT", "SOFTWARE LICENSE AGREEMENT",
               "ASSET PURCHASE AGREEMENT", "NON-DISCLOSURE AGREEMENT", "SUPPLY AGREEMENT",
               "COMMERCIAL LEASE AGREEMENT", "EMPLOYMENT AGREEMENT", "LOAN AND SECURITY AGREEMENT",
               "DISTRIBUTION AGREEMENT", "CONSULTING AGREEMENT")
_ROLES = (("Provider", "Customer"), ("Licensor", "Licensee"), ("Seller", "Buyer"),
          ("Disclosing Party", "Receiving Party"), ("Supplier", "Purchaser"),
          ("Landlord", "Tenant"), ("Employer", "Employee"), ("Lender", "Borrower"),
          ("Distributor", "Manufacturer"), ("Consultant", "Client"))
_DEFINED_TERMS = {
    "Affiliate": "any entity that directly or indirectly controls, is controlled by, or is under "
                 "common control with a party, where “control” means ownership of more than fifty "
                 "percent (50%) of the voting interests of such entity",
    "Business Day": "any day other than a Saturday, Sunday or a day on which banks in {city} are "
                    "authorized or required by law to close",
    "Confidential Information": "all non-public information disclosed by or on behalf of a party, "
                                "whether orally or in writing, that is designated as confidential "
                                "or that reasonably should be understood to be confidential",
    "Deliverables": "all reports, software, documentation and other materials delivered by "
                    "{a} to {b} under a Statement of Work",
    "Fees": "the amounts payable by {b} as set forth in Schedule {letter}",
    "Intellectual Property Rights": "all patents, copyrights, trademarks, trade secrets and other "
                                    "proprietary rights, whether registered or unregistered",
    "Losses": "any and all losses, damages, liabilities, penalties, costs and expenses, including "
              "reasonable attorneys’ fees",
    "Term": "the period described in Section {sec}",
    "Territory": "the {place} and such other jurisdictions as the parties may agree in writing",
    "Change of Control": "any transaction or series of related transactions by which a person "
                         "acquires beneficial ownership of more than fifty percent (50%) of the "
                         "outstanding voting securities of a party",
}
_CLAUSE_TOPICS = ("SERVICES", "PAYMENT TERMS", "CONFIDENTIALITY", "INTELLECTUAL PROPERTY",
                  "REPRESENTATIONS AND WARRANTIES", "INDEMNIFICATION", "LIMITATION OF LIABILITY",
                  "TERM AND TERMINATION", "INSURANCE", "FORCE MAJEURE", "ASSIGNMENT", "NOTICES",
                  "DISPUTE RESOLUTION", "COMPLIANCE WITH LAWS", "AUDIT RIGHTS", "NON-SOLICITATION",
                  "DATA PROTECTION", "MISCELLANEOUS")
_OBLIGATIONS = (
    "{x} shall perform its obligations under this Agreement in a professional and workmanlike "
    "manner, consistent with generally accepted industry standards",
    "{x} shall pay all undisputed invoices within {days} ({days_n}) days after receipt",
    "{x} shall not disclose any Confidential Information of {y} to any third party without the "
    "prior written consent of {y}",
    "{x} shall indemnify, defend and hold harmless {y} and its Affiliates from and against any "
    "and all Losses arising out of any third-party claim",
    "{x} shall maintain, at its own expense, commercial general liability insurance with limits "
    "of not less than ${amount} per occurrence",
    "{x} may terminate this Agreement upon {days} ({days_n}) days’ written notice if {y} "
    "materially breaches this Agreement and fails to cure such breach within such period",
    "{x} represents and warrants that it has full corporate power and authority to enter into "
    "this Agreement and to perform its obligations hereunder",
    "neither party shall be liable for any failure or delay in performance caused by events "
    "beyond its reasonable control, including acts of God, fire, flood, war or pandemic",
    "{x} may not assign this Agreement, in whole or in part, without the prior written consent "
    "of {y}, which consent shall not be unreasonably withheld",
    "all notices under this Agreement shall be in writing and shall be deemed given when "
    "delivered personally or by nationally recognized overnight courier",
    "late payments shall accrue interest at the rate of {pct} percent ({pct}%) per month or the "
    "maximum rate permitted by law, whichever is less",
    "{x} shall comply with all applicable laws, regulations and orders in performing this "
    "Agreement",
    "{x} shall, upon reasonable notice and no more than once per calendar year, permit {y} to "
    "audit the books and records relating to the Fees",
    "during the Term and for {months} ({months_n}) months thereafter, {x} shall not solicit for "
    "employment any employee of {y}",
    "{x} shall process personal data only on the documented instructions of {y} and shall "
    "implement appropriate technical and organizational measures",
    "the aggregate liability of either party arising out of this Agreement shall not exceed the "
    "Fees paid in the twelve (12) months preceding the event giving rise to the claim",
    "all Intellectual Property Rights in the Deliverables shall vest in {y} upon payment in full",
    "any dispute arising out of or relating to this Agreement shall be finally settled by "
    "binding arbitration in {city}, {state}",
)
_CONDITIONS = ("to the extent permitted by applicable law", "except as otherwise provided in "
               "Section {ref}", "subject to the limitations set forth in Section {ref}",
               "notwithstanding anything to the contrary herein", "unless otherwise agreed in "
               "writing by the parties", "in accordance with Schedule {letter}")
_LIST_ITEMS = ("any breach of Section {ref}", "gross negligence or willful misconduct",
               "infringement of any Intellectual Property Rights of a third party",
               "the insolvency, bankruptcy or receivership of a party",
               "any failure to obtain a required license or permit",
               "fraud or intentional misrepresentation", "death or bodily injury",
               "the unauthorized use or disclosure of Confidential Information",
               "any amounts due and owing under Section {ref}",
               "the failure to comply with applicable export control laws")

_STATUTE_SUBJECTS = ("COMMERCIAL TRANSACTIONS", "CONSUMER PROTECTION", "CIVIL PROCEDURE",
                     "CORPORATIONS", "LANDLORD AND TENANT", "EMPLOYMENT RELATIONS",
                     "SECURED TRANSACTIONS", "PUBLIC RECORDS", "ENVIRONMENTAL QUALITY",
                     "INSURANCE", "DATA PRIVACY", "PROFESSIONAL LICENSING")
_SECTION_TITLES = ("Definitions", "Scope and applicability", "Duties of the seller",
                   "Rights of the consumer", "Notice requirements", "Exemptions",
                   "Civil penalties", "Enforcement by the attorney general", "Private right of "
                   "action", "Statute of limitations", "Rulemaking authority", "Severability",
                   "Effective date", "Records to be kept", "Prohibited practices",
                   "Remedies not exclusive", "Registration", "Fees and costs")
_STATUTE_DEFINITIONS = {
    "Commissioner": "the commissioner of the department or the commissioner’s designee",
    "Consumer": "an individual who seeks or acquires goods or services for personal, family or "
                "household purposes",
    "Department": "the department of commerce of this state",
    "Employer": "a person who employs one or more individuals in this state",
    "Goods": "any property that is tangible and movable at the time of the transaction",
    "Licensee": "a person holding a license issued under this chapter",
    "Person": "a natural person, corporation, trust, partnership or other legal entity",
    "Personal information": "information that identifies, relates to or could reasonably be "
                            "linked with a particular individual",
    "Record": "information inscribed on a tangible medium or stored in an electronic medium and "
              "retrievable in perceivable form",
    "Seller": "a person who sells or offers to sell goods or services to a consumer",
    "Transaction": "a sale, lease or other disposition of goods or services",
}
_STATUTE_RULES = (
    "A person may not engage in an unfair or deceptive act or practice in the conduct of any "
    "trade or commerce",
    "The department shall adopt rules necessary to carry out the purposes of this chapter",
    "A seller shall provide the consumer with a written notice of the right to cancel not later "
    "than the time the contract is signed",
    "An action under this section must be commenced within {years} years after the cause of "
    "action accrues",
    "A person who violates this chapter is liable for a civil penalty of not more than "
    "${amount} for each violation",
    "The attorney general may bring an action in the name of the state to restrain by temporary "
    "or permanent injunction any practice prohibited by this chapter",
    "This chapter does not apply to a transaction or act permitted under laws administered by a "
    "regulatory board or officer acting under statutory authority of this state",
    "A licensee shall keep records of each transaction for not less than {years} years and shall "
    "make the records available to the commissioner upon request",
    "The remedies provided in this chapter are in addition to any other remedies available at "
    "law or in equity",
    "If any provision of this chapter or its application to any person or circumstance is held "
    "invalid, the invalidity does not affect other provisions or applications of the chapter",
    "An employer may not discharge or otherwise discriminate against an employee because the "
    "employee has filed a complaint under this chapter",
    "Personal information may be disclosed only with the written consent of the individual to "
    "whom it pertains, except as provided in subsection ({sub})",
)

_STATUTE_ITEMS = ("the name and address of the person", "the date of the transaction",
                  "a description of the goods or services", "the total price, including all "
                  "taxes and fees", "the license number issued by the department", "any "
                  "other information required by rule of the commissioner", "a statement of the "
                  "right to cancel under § {sec}-1{sec}", "the signature of each party")

_CIRCUITS = ("1st Cir.", "2d Cir.", "3d Cir.", "4th Cir.", "5th Cir.", "6th Cir.", "7th Cir.",
             "8th Cir.", "9th Cir.", "10th Cir.", "11th Cir.", "D.C. Cir.", "Fed. Cir.")
_CIRCUIT_NAMES = ("FIRST", "SECOND", "THIRD", "FOURTH", "FIFTH", "SIXTH", "SEVENTH", "EIGHTH",
                  "NINTH", "TENTH", "ELEVENTH", "DISTRICT OF COLUMBIA", "FEDERAL")
_DISTRICTS = (("S.D.N.Y.", "Southern District of New York"), ("N.D. Cal.", "Northern District of "
              "California"), ("D. Mass.", "District of Massachusetts"), ("N.D. Ill.", "Northern "
              "District of Illinois"), ("E.D. Va.", "Eastern District of Virginia"),
              ("D. Or.", "District of Oregon"), ("W.D. Tex.", "Western District of Texas"),
              ("D. Del.", "District of Delaware"))
_REPORTERS = (("U.S.", 300, 600, None), ("S. Ct.", 100, 145, None), ("F.2d", 500, 999, "circuit"),
              ("F.3d", 1, 999, "circuit"), ("F.4th", 1, 95, "circuit"),
              ("F. Supp. 2d", 1, 999, "district"), ("F. Supp. 3d", 1, 700, "district"))
_STATUTE_CITES = ("42 U.S.C. § 1983", "28 U.S.C. § 1331", "28 U.S.C. § 1332(a)",
                  "15 U.S.C. § 78j(b)", "29 U.S.C. § 621", "42 U.S.C. § 2000e-2(a)",
                  "17 U.S.C. § 107", "35 U.S.C. § 101", "18 U.S.C. § 1030(a)(2)",
                  "Fed. R. Civ. P. 12(b)(6)", "Fed. R. Civ. P. 56(a)", "Fed. R. Evid. 702",
                  "U.S. Const. amend. XIV, § 1", "17 C.F.R. § 240.10b-5")
_HOLDINGS = (
    "We review de novo a district court’s grant of summary judgment",
    "Summary judgment is appropriate only where there is no genuine dispute as to any material "
    "fact and the movant is entitled to judgment as a matter of law",
    "To survive a motion to dismiss, a complaint must contain sufficient factual matter, "
    "accepted as true, to state a claim to relief that is plausible on its face",
    "A plaintiff asserting a claim under {stat} must show that the defendant acted under color "
    "of state law",
    "The interpretation of a contract is a question of law that we review de novo",
    "Where the language of a contract is clear and unambiguous, the parties’ intent is to be "
    "ascertained from the plain meaning of the words used",
    "We review the district court’s evidentiary rulings for an abuse of discretion",
    "Qualified immunity shields government officials from liability unless their conduct "
    "violated clearly established statutory or constitutional rights",
    "The party invoking federal jurisdiction bears the burden of establishing it",
    "A fair use analysis under {stat} weighs four statutory factors, none of which is "
    "dispositive",
    "An agency’s interpretation of an ambiguous statute is not controlling, and courts must "
    "exercise independent judgment in deciding whether an agency has acted within its authority",
    "Damages for breach of contract are measured by the loss in value to the injured party of "
    "the other party’s performance caused by its failure or deficiency",
    "A forum-selection clause is prima facie valid and should be enforced unless enforcement is "
    "shown to be unreasonable under the circumstances",
)
_FACTS = (
    "{p} entered into a written agreement with {d} on {date}",
    "{d} terminated the agreement, citing an alleged breach of the confidentiality provisions",
    "{p} filed suit in the {district}, asserting claims for breach of contract and unjust "
    "enrichment",
    "the district court granted {d}’s motion for summary judgment and entered final judgment",
    "{p} timely appealed, and we have jurisdiction under 28 U.S.C. § 1291",
    "the record shows that {d} received the notice on {date} but did not respond",
    "{p} alleges that officers of the {city} Police Department used excessive force",
    "the parties dispute whether the limitation-of-liability clause bars consequential damages",
    "{d} moved to dismiss for lack of personal jurisdiction under Fed. R. Civ. P. 12(b)(2)",
    "the jury returned a verdict for {p} in the amount of ${amount}",
)
_CONNECTIVES = ("Accordingly", "Moreover", "However", "Nevertheless", "In addition",
                "For these reasons", "Here", "By contrast", "Indeed", "Thus")
_INQUIRIES = ("fact-intensive", "objective", "context-specific", "holistic")
_DISPOSITIONS = ("AFFIRMED.", "REVERSED and REMANDED.", "AFFIRMED in part, REVERSED in part, and "
                 "REMANDED.", "VACATED and REMANDED for further proceedings consistent with this "
                 "opinion.")


# --------------------------------------------------------------------------------------------
# Small builders
# --------------------------------------------------------------------------------------------
def _person(r: random.Random) -> str:
    return f"{r.choice(_FIRST)} {r.choice(_LAST)}"


def _company(r: random.Random) -> tuple[str, str]:
    suffix, form = r.choice(_COMPANY_FORMS)
    comma = "," if suffix in ("Inc.", "Ltd.") else ""
    return f"{r.choice(_COMPANY_STEMS)} {r.choice(_COMPANY_TRADES)}{comma} {suffix}", form


def _date(r: random.Random, lo: int = 1975, hi: int = 2023) -> str:
    return f"{r.choice(_MONTHS)} {r.randint(1, 28)}, {r.randint(lo, hi)}"


def _amount(r: random.Random) -> str:
    return f"{r.choice((1, 2, 5, 10, 25, 50, 100, 250)) * r.choice((1000, 10000, 100000)):,}"


def _case_name(r: random.Random) -> str:
    left = r.choice(_LAST) if r.random() < 0.6 else _company(r)[0]
    right = r.choice(_LAST) if r.random() < 0.5 else r.choice(
        (f"City of {r.choice(_CITIES)}", f"{r.choice(_COMPANY_STEMS)} Corp.", "United States",
         f"State of {r.choice(_STATES)}", r.choice(_LAST)))
    return f"{left} v. {right}"


def _case_cite(r: random.Random, pin: bool = True) -> str:
    reporter, lo, hi, court_kind = r.choice(_REPORTERS)
    volume, page = r.randint(lo, hi), r.randint(1, 1500)
    pin_text = f", {page + r.randint(1, 40)}" if pin and r.random() < 0.6 else ""
    year = r.randint(1960, 2023)
    if court_kind == "circuit":
        court = f"{r.choice(_CIRCUITS)} "
    elif court_kind == "district":
        court = f"{r.choice(_DISTRICTS)[0]} "
    else:
        court = ""
    return f"{_case_name(r)}, {volume} {reporter} {page}{pin_text} ({court}{year})"


class _Slots(dict):
    """Template slots drawn on first use, so a template consumes randomness only for its fields."""

    def __init__(self, r: random.Random, known: dict):
        super().__init__(known)
        self.r = r

    def __missing__(self, key: str) -> str:
        r = self.r
        if key in ("days", "months"):
            n = r.choice((10, 15, 30, 45, 60, 90) if key == "days" else (6, 12, 18, 24))
            self[key], self[key + "_n"] = _words(n), str(n)
        else:
            self[key] = {
                "amount": lambda: _amount(r),
                "pct": lambda: r.choice(("1", "1.5", "2")),
                "ref": lambda: f"{r.randint(1, 14)}.{r.randint(1, 6)}",
                "letter": lambda: r.choice("ABCDE"),
                "city": lambda: r.choice(_CITIES),
                "state": lambda: r.choice(_STATES),
                "place": lambda: f"State of {r.choice(_STATES)}",
                "sec": lambda: str(r.randint(2, 14)),
                "years": lambda: r.choice(("two", "three", "four", "six")),
                "sub": lambda: r.choice("abcd"),
                "stat": lambda: r.choice(_STATUTE_CITES),
                "date": lambda: _date(r),
                "district": lambda: r.choice(_DISTRICTS)[1],
            }[key]()
        return self[key]


def _fill(r: random.Random, template: str, **known: str) -> str:
    return template.format_map(_Slots(r, known))


def _words(n: int) -> str:
    return {10: "ten", 15: "fifteen", 30: "thirty", 45: "forty-five", 60: "sixty", 90: "ninety",
            6: "six", 12: "twelve", 18: "eighteen", 24: "twenty-four"}[n]


def _quote(r: random.Random, text: str) -> str:
    # Both typographic and straight quotes occur in real filings; the tokenizer must keep both.
    return f"“{text}”" if r.random() < 0.7 else f'"{text}"'


# --------------------------------------------------------------------------------------------
# Documents
# --------------------------------------------------------------------------------------------
def _contract(r: random.Random, long: bool) -> str:
    title = r.choice(_AGREEMENTS)
    role_a, role_b = r.choice(_ROLES)
    (name_a, form_a), (name_b, form_b) = _company(r), _company(r)
    state_a, state_b, law = r.choice(_STATES), r.choice(_STATES), r.choice(_STATES)
    q = lambda s: _quote(r, s)  # noqa: E731 - one quoting style per call site is the point
    lines = [
        title, "",
        f"This {title.title()} (the {q('Agreement')}) is entered into as of {_date(r, 2005)} "
        f"(the {q('Effective Date')}) by and between {name_a}, a {state_a} {form_a} with its "
        f"principal place of business at {r.randint(1, 9999)} {r.choice(_STREETS)}, "
        f"{r.choice(_CITIES)} ({q(role_a)}), and {name_b}, a {state_b} {form_b} "
        f"({q(role_b)}). {role_a} and {role_b} are each a {q('Party')} and together the "
        f"{q('Parties')}.", "",
    ]
    if r.random() < 0.5:
        lines += [
            "RECITALS", "",
            f"WHEREAS, {role_a} is engaged in the business of providing "
            f"{r.choice(_COMPANY_TRADES).lower()} services;",
            f"WHEREAS, {role_b} desires to obtain such services on the terms set forth herein; and",
            "NOW, THEREFORE, in consideration of the mutual covenants contained herein and other "
            "good and valuable consideration, the receipt and sufficiency of which are hereby "
            "acknowledged, the Parties agree as follows:", "",
        ]
    lines.append("1. DEFINITIONS")
    terms = r.sample(sorted(_DEFINED_TERMS), k=r.randint(2, 4 if not long else len(_DEFINED_TERMS)))
    for i, term in enumerate(sorted(terms), start=1):
        meaning = _fill(r, _DEFINED_TERMS[term], a=role_a, b=role_b)
        lines.append(f"1.{i} {q(term)} means {meaning}.")
    if long:  # long contracts repeat clause headings, as amended-and-restated ones do
        topics = [r.choice(_CLAUSE_TOPICS) for _ in range(r.randint(10, 24))]
    else:
        topics = r.sample(_CLAUSE_TOPICS, k=r.randint(1, 4))
    for c, topic in enumerate(topics, start=2):
        lines += ["", f"{c}. {topic}"]
        for s in range(1, r.randint(1, 3) + 1):
            x, y = (role_a, role_b) if r.random() < 0.5 else (role_b, role_a)
            sentence = _fill(r, r.choice(_OBLIGATIONS), x=x, y=y)
            if r.random() < 0.4:
                sentence = f"{_fill(r, r.choice(_CONDITIONS)).capitalize()}, {sentence}"
            sentence = sentence[0].upper() + sentence[1:]
            if r.random() < 0.3:
                items = r.sample(_LIST_ITEMS, k=r.randint(2, 4))
                enumerated = [f"    ({chr(97 + k)}) {_fill(r, it)}" for k, it in enumerate(items)]
                enumerated = [e + (";" if k < len(items) - 2 else "; or" if k == len(items) - 2
                                   else ".") for k, e in enumerate(enumerated)]
                lines += [f"{c}.{s} {sentence}, except in the case of:"] + enumerated
            else:
                lines.append(f"{c}.{s} {sentence}.")
    last = len(topics) + 2
    lines += ["", f"{last}. GOVERNING LAW",
              f"{last}.1 This Agreement shall be governed by and construed in accordance with the "
              f"laws of the State of {law}, without regard to its conflict of laws principles.",
              f"{last}.2 Each Party irrevocably submits to the exclusive jurisdiction of the state "
              f"and federal courts located in {r.choice(_CITIES)}, {law}.", "",
              "IN WITNESS WHEREOF, the Parties have executed this Agreement as of the Effective "
              "Date.", ""]
    for name in (name_a, name_b):
        lines += [name.upper(), "By: ______________________", f"Name: {_person(r)}",
                  f"Title: {r.choice(_SIGNATORY_TITLES)}", ""]
    return "\n".join(lines).rstrip() + "\n"


def _statute(r: random.Random, long: bool) -> str:
    title_no, chapter = r.randint(1, 50), r.randint(1, 30)
    subject = r.choice(_STATUTE_SUBJECTS)
    lines = [f"TITLE {title_no} — {subject}", f"CHAPTER {chapter} — "
             f"{r.choice(_SECTION_TITLES).upper()}", ""]
    n_sections = r.randint(10, 24) if long else r.randint(2, 4)
    first = r.randint(1, 90)
    for k in range(n_sections):
        number = f"{title_no}-{chapter}{first + k:02d}"
        heading = "Definitions" if k == 0 else r.choice(_SECTION_TITLES[1:])
        lines.append(f"§ {number}. {heading}.")
        if k == 0:
            lines.append("In this chapter:")
            terms = sorted(r.sample(sorted(_STATUTE_DEFINITIONS), k=r.randint(3, 6)))
            for j, term in enumerate(terms, start=1):
                lines.append(f"({j}) {_quote(r, term)} means {_STATUTE_DEFINITIONS[term]}.")
        else:
            for sub in range(r.randint(1, 3)):
                rule = _fill(r, r.choice(_STATUTE_RULES))
                if r.random() < 0.35:
                    lines.append(f"({chr(97 + sub)}) {rule}, and the notice shall state:")
                    items = [_fill(r, item) for item in r.sample(_STATUTE_ITEMS, k=r.randint(2, 3))]
                    lines += [f"    ({k}) {item}{';' if k < len(items) else '.'}"
                              for k, item in enumerate(items, start=1)]
                else:
                    lines.append(f"({chr(97 + sub)}) {rule}.")
        if r.random() < 0.3:
            enacted = r.randint(1980, 2022)
            lines.append(f"History: Added by Laws {enacted}, ch. {r.randint(1, 400)}, "
                         f"§ {r.randint(1, 30)}, eff. {_date(r, enacted, enacted + 1)}.")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _opinion(r: random.Random, long: bool) -> str:
    circuit = r.randrange(len(_CIRCUIT_NAMES))
    # The short names the opinion uses: a person's surname, a company's first word.
    if r.random() < 0.5:
        plaintiff = _person(r)
        p_short = plaintiff.split()[-1]
    else:
        plaintiff = _company(r)[0]
        p_short = plaintiff.split()[0]
    if r.random() < 0.6:
        defendant = _company(r)[0]
        d_short = defendant.split()[0]
    else:
        defendant = _person(r)
        d_short = defendant.split()[-1]
    plaintiff, defendant = plaintiff.upper(), defendant.upper()
    district = r.choice(_DISTRICTS)[1]
    year = r.randint(1990, 2023)
    judges = sorted({r.choice(_LAST).upper() for _ in range(3)})
    author = judges[0]
    lines = ["UNITED STATES COURT OF APPEALS", f"FOR THE {_CIRCUIT_NAMES[circuit]} CIRCUIT", "",
             f"{plaintiff}, Plaintiff-Appellant,", "v.", f"{defendant}, Defendant-Appellee.", "",
             f"No. {year % 100:02d}-{r.randint(10000, 99999)}", "",
             f"Appeal from the United States District Court for the {district}",
             f"Argued and Submitted {_date(r, year, year)} — Filed {_date(r, year, year)}", "",
             f"Before: {', '.join(judges)}, Circuit Judges.", "", "OPINION", "",
             f"{author}, Circuit Judge:", ""]
    parts = ["BACKGROUND", "DISCUSSION"] if r.random() < 0.5 else [
        "BACKGROUND", "STANDARD OF REVIEW", "DISCUSSION"]
    if long:
        parts += ["ADDITIONAL ISSUES ON APPEAL", "REMEDY"]
    numerals = ("I", "II", "III", "IV", "V", "VI")
    paragraph_no = 1
    for i, part in enumerate(parts + ["CONCLUSION"]):
        lines += [f"{numerals[i]}. {part}", ""]
        n_paras = r.randint(3, 6) if long and part != "CONCLUSION" else 1 + (part == "DISCUSSION")
        for _ in range(n_paras):
            sentences = []
            for _ in range(r.randint(2, 4)):
                roll = r.random()
                if roll < 0.3:
                    s = f"{_fill(r, r.choice(_FACTS), p=p_short, d=d_short)}."
                    s = s[0].upper() + s[1:]
                elif roll < 0.65:
                    s = f"{_fill(r, r.choice(_HOLDINGS))}. {_case_cite(r)}."
                elif roll < 0.8:
                    s = (f"{r.choice(_CONNECTIVES)}, the statute provides that "
                         f"{_quote(r, _fill(r, r.choice(_STATUTE_RULES)).lower())}. "
                         f"{r.choice(_STATUTE_CITES)}.")
                elif roll < 0.9:
                    s = f"See id. at {r.randint(100, 999)}; see also {_case_cite(r)}."
                else:
                    s = (f"{r.choice(_CONNECTIVES)}, as we explained in {_case_name(r)}, the "
                         f"inquiry is {r.choice(_INQUIRIES)} "
                         f"— not a mechanical test. {_case_cite(r, pin=False)} (quoting "
                         f"{_case_cite(r)}).")
                sentences.append(s)
            # Some state courts number paragraphs with ¶; keep the pilcrow in the corpus.
            prefix = f"¶ {paragraph_no} " if r.random() < 0.3 else ""
            paragraph_no += 1
            lines += [prefix + " ".join(sentences), ""]
    lines.append(r.choice(_DISPOSITIONS))
    return "\n".join(lines).rstrip() + "\n"


_BUILDERS = {"contract": _contract, "statute": _statute, "opinion": _opinion}


def generate_document(index: int, seed: int) -> LegalDocument:
    r = random.Random(f"saul-synthetic-v{GENERATOR_VERSION}:{seed}:{index}")
    kind = r.choices(KINDS, weights=_KIND_WEIGHTS)[0]
    long = r.random() < _LONG_FRACTION
    text = _BUILDERS[kind](r, long)
    return LegalDocument(id=f"synthetic-{seed}-{index:07d}", kind=kind, text=text)


def generate_corpus(num_documents: int, seed: int) -> List[LegalDocument]:
    """`num_documents` documents; the same seed always gives the same list."""
    if num_documents < 0:
        raise ValueError(f"num_documents must be >= 0, got {num_documents}")
    return [generate_document(i, seed) for i in range(num_documents)]


def generate_documents(num_documents: int, seed: int) -> List[str]:
    """The texts of `generate_corpus` (same seed -> identical output)."""
    return [doc.text for doc in generate_corpus(num_documents, seed)]


def write_corpus_jsonl(path: os.PathLike, docs: Iterable[LegalDocument | str]) -> Path:
    """One {"id", "kind", "text"} object per line, written atomically.

    Plain strings are accepted too (kind "text", id "doc-<index>") so that any text list can be
    kept in the same format as the synthetic corpus.
    """
    lines = []
    for i, doc in enumerate(docs):
        if isinstance(doc, str):
            doc = LegalDocument(id=f"doc-{i:07d}", kind="text", text=doc)
        lines.append(json.dumps(asdict(doc), ensure_ascii=False))
    return write_text_atomic(path, "".join(line + "\n" for line in lines))


def read_corpus_jsonl(path: os.PathLike) -> List[LegalDocument]:
    with open(path, encoding="utf-8") as f:
        return [LegalDocument(**json.loads(line)) for line in f if line.strip()]
